"""Code predictor against HF ``talker.code_predictor.generate`` driven as the HF talker drives it, fp32.

``generate(inputs_embeds=[past_hidden, talker.codec_embedding(c0)], max_new_tokens=15, do_sample=False)`` (what
``Qwen3OmniMoeTalkerForConditionalGeneration.prepare_inputs_for_generation`` calls each frame), and the talker's
next-input sum built from ``output_hidden_states`` exactly as there.
Tolerance: logits 1e-4 max abs (logits O(3); reached ~1e-6, printed with -s); greedy codes equal.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_fixtures import hf_config, randomize_, tiny_config_dict
from component_loading import load_from_hf, param_shapes

from omni_jax.config import OmniConfig
from omni_jax.models.code_predictor import (
    CodePredictor,
    filter_logits,
    hf_rules,
    predict_codes_jit,
)
from omni_jax.models.common import pure_params
from omni_jax.weights.mapping import NameTable, export_tensors, flatten

TOL = 1e-4
BATCH = 3




def build_hf_code_predictor(cfg_dict, seed):
    """HF code predictor alone (same config and re-draw as ``build_hf_model``'s), plus a talker-like codec table."""
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
        Qwen3OmniMoeTalkerCodePredictorModelForConditionalGeneration as CP,
    )

    torch.manual_seed(seed)
    c = hf_config(cfg_dict).talker_config.code_predictor_config
    c._attn_implementation = "eager"
    model = CP(c)
    randomize_(model, seed)
    talker_codec_embedding = torch.nn.Embedding(3072, c.hidden_size)
    randomize_(talker_codec_embedding, seed + 1)  # N(0, 1), as the talker's codec_embedding in the fixture
    return model.float().eval(), talker_codec_embedding


@pytest.fixture(scope="module")
def setup():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes: one thread is much faster than two on this shared machine
    cfg_dict = tiny_config_dict()
    hf, talker_emb = build_hf_code_predictor(cfg_dict, seed=0)
    cfg = OmniConfig.from_hf(cfg_dict).talker.code_predictor
    model = CodePredictor.abstract(cfg)
    load_from_hf(model, hf_rules(cfg), hf.state_dict())
    g = torch.Generator().manual_seed(3)
    h = cfg.hidden_size
    past_hidden = torch.randn(BATCH, h, generator=g) * (1 + 0.2 * torch.randn(h, generator=g))  # like a normed state
    c0 = torch.randint(0, 2048, (BATCH,), generator=g)
    with torch.no_grad():
        c0_embed = talker_emb(c0)
    yield hf, model, cfg, past_hidden, c0_embed
    torch.set_num_threads(threads)


def _hf_frame(hf, past_hidden, c0_embed):
    """What the HF talker does for one frame (prepare_inputs_for_generation)."""
    with torch.no_grad():
        res = hf.generate(
            inputs_embeds=torch.cat((past_hidden[:, None], c0_embed[:, None]), dim=1),
            max_new_tokens=hf.config.num_code_groups - 1, do_sample=False,
            output_hidden_states=True, return_dict_in_generate=True, output_logits=True,
        )
        mid = [hid[0] for hid in res.hidden_states[1:]]
        last = hf.get_input_embeddings()[-1](res.sequences[..., -1:])
        residual_sum = torch.cat(mid + [last], dim=1).sum(1)  # the talker adds its codec_embedding(c0) to this
    return res.sequences.numpy(), torch.stack(res.logits, 1).numpy(), residual_sum.numpy()


def test_rules_cover_every_tensor_and_parameter(setup):
    hf, model, cfg, *_ = setup
    table = NameTable(hf_rules(cfg), param_shapes(model))  # raises on a parameter without a rule / a name claimed twice
    sd = hf.state_dict()
    assert set(table.names()) == set(sd)
    flat = {k: np.asarray(v) for k, v in flatten(pure_params(model)).items()}
    for name, tensor in export_tensors(table, flat):
        np.testing.assert_array_equal(tensor, sd[name].numpy())


def test_greedy_frame_matches_hf_generate(setup):
    hf, model, cfg, past_hidden, c0_embed = setup
    ref_codes, ref_logits, ref_sum = _hf_frame(hf, past_hidden, c0_embed)
    out = model(jnp.asarray(past_hidden.numpy()), jnp.asarray(c0_embed.numpy()))
    chex.assert_shape(out["codes"], (BATCH, 15))
    chex.assert_shape(out["embed_sum"], (BATCH, cfg.hidden_size))
    chex.assert_shape(out["logits"], (BATCH, 15, cfg.vocab_size))
    assert len(np.unique(ref_codes)) > 20  # the tiny model's codes vary: the comparison is not vacuous
    err = np.abs(np.asarray(out["logits"]) - ref_logits).max()
    sum_err = np.abs(np.asarray(out["embed_sum"]) - ref_sum).max()
    print(f"logits max abs diff {err:.2e}, embed_sum max abs diff {sum_err:.2e}")
    assert err <= TOL and sum_err <= TOL
    np.testing.assert_array_equal(np.asarray(out["codes"]), ref_codes)


def test_broken_rope_is_caught(setup):
    """Theta 1e4 (the HF class default) instead of the checkpoint's 1e6 moves the logits far beyond tolerance."""
    hf, model, cfg, past_hidden, c0_embed = setup
    _, ref_logits, _ = _hf_frame(hf, past_hidden, c0_embed)
    out = predict_codes_jit(pure_params(model), jnp.asarray(past_hidden.numpy()), jnp.asarray(c0_embed.numpy()),
                            jax.random.key(0), cfg=dataclasses.replace(cfg, rope_theta=1e4))
    assert np.abs(np.asarray(out["logits"]) - ref_logits).max() > 100 * TOL


def test_filter_matches_hf_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = np.random.default_rng(0).normal(size=(4, 2048)).astype(np.float32) * 3
    ref = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(50)(None, torch.from_numpy(logits))).numpy()
    ours = np.asarray(filter_logits(jnp.asarray(logits), 50, 0.8, 1.0))
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))
    np.testing.assert_array_equal(ours[np.isfinite(ours)], ref[np.isfinite(ref)])
    assert 1 < np.isfinite(ours).sum(-1).min() < 50


def test_sampled_frame(setup):
    """Sampled codes are drawn from HF's top-k 50 / top-p 0.8 set of each step's logits; the key decides them."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    _, model, cfg, past_hidden, c0_embed = setup
    ph, c0 = jnp.asarray(past_hidden.numpy()), jnp.asarray(c0_embed.numpy())
    a = model(ph, c0, key=jax.random.key(1), sample=True)
    b = model(ph, c0, key=jax.random.key(1), sample=True)
    c = model(ph, c0, key=jax.random.key(2), sample=True)
    np.testing.assert_array_equal(np.asarray(a["codes"]), np.asarray(b["codes"]))
    assert not np.array_equal(np.asarray(a["codes"]), np.asarray(c["codes"]))
    logits = torch.from_numpy(np.array(a["logits"]).reshape(-1, cfg.vocab_size))
    allowed = np.isfinite(TopPLogitsWarper(0.8)(None, TopKLogitsWarper(50)(None, logits)).numpy())
    codes = np.asarray(a["codes"]).reshape(-1)
    assert allowed[np.arange(codes.size), codes].all()
    greedy = np.asarray(model(ph, c0)["codes"])
    assert not np.array_equal(greedy, np.asarray(a["codes"]))
