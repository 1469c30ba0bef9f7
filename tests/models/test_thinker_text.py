"""fp32 / bf16 parity of the Thinker's text model with HF on a tiny random checkpoint.

Tolerance: 1e-4 max abs on valid (non-padded) positions in fp32, as issue 2 asks. Measured: 7.1e-5 on
logits of magnitude 8 (5.1e-5 on hidden states of magnitude ~15). That is the reference's own fp32 noise on
this rescaled model: HF's sdpa and eager attention differ from each other by 5.9e-5 on the same logits. The bf16 run is
compared with HF's bf16 run relative to the reference's own bf16 noise (see the test's docstring).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from component_loading import load_component
from omni_jax.config import OmniConfig
from omni_jax.models import thinker_text
from omni_jax.models.common import pure_params
from omni_jax.models.decoder import StackOptions
from omni_jax.moe import RoutingConfig


def text_positions(mask: np.ndarray) -> np.ndarray:
    pos = np.cumsum(mask, axis=-1) - 1
    pos = np.where(mask == 1, pos, 1)
    return np.broadcast_to(pos[None], (3, *mask.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 151000, size=(2, 13))
    mask = np.ones((2, 13), np.int64)
    mask[1, :5] = 0  # left padding
    ids[1, :5] = 151643
    return ids, mask


@pytest.fixture(scope="module")
def hf_model(tiny_ckpt):
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeForConditionalGeneration

    m = Qwen3OmniMoeForConditionalGeneration.from_pretrained(tiny_ckpt, dtype=torch.float32,
                                                             attn_implementation="eager")
    return m.eval()


def hf_outputs(hf_model, ids, mask):
    with torch.no_grad():
        out = hf_model.thinker(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                               output_hidden_states=True, use_cache=False)
    return out.logits.float().numpy(), [h.float().numpy() for h in out.hidden_states]


def run_ours(tiny_ckpt, ids, mask, dtype=jnp.float32, routing=None):
    cfg = OmniConfig.from_file(tiny_ckpt).thinker.text
    model = load_component(tiny_ckpt, lambda r: thinker_text.ThinkerText(cfg, rngs=r, dtype=dtype),
                           thinker_text.hf_rules(cfg), "thinker.", dtype=dtype)
    p = pure_params(model)
    opts = StackOptions.uniform(cfg, routing, collect_hidden=True, backend="dense")
    emb = thinker_text.embed_tokens(p, jnp.asarray(ids))
    out = jax.jit(lambda p, e, pos, m: thinker_text.text_forward(p, cfg, opts, e, pos, m))(
        p, emb, jnp.asarray(text_positions(mask)), jnp.asarray(mask))
    return out, cfg


def test_fp32_logits_and_every_hidden_state(tiny_ckpt, hf_model, batch):
    ids, mask = batch
    ref_logits, ref_hidden = hf_outputs(hf_model, ids, mask)
    out, cfg = run_ours(tiny_ckpt, ids, mask)
    valid = mask.astype(bool)
    logits = np.asarray(out["logits"])
    assert logits.shape == ref_logits.shape
    err = np.abs(logits - ref_logits)[valid].max()
    assert err < 1e-4, err
    assert np.abs(ref_logits[valid]).max() > 1.0  # the logits are not trivially small
    hidden = np.asarray(out["hidden_states"]["all"])
    assert hidden.shape[0] == cfg.num_layers
    for layer in range(cfg.num_layers - 1):
        e = np.abs(hidden[layer] - ref_hidden[layer + 1])[valid].max()
        assert e < 1e-4, (layer, e)
    e = np.abs(np.asarray(out["hidden"]) - ref_hidden[cfg.num_layers])[valid].max()
    assert e < 1e-4, e


def test_parity_detects_broken_routing(tiny_ckpt, hf_model, batch):
    """Without top-k renormalisation the output must move by far more than the tolerance."""
    ids, mask = batch
    ref_logits, _ = hf_outputs(hf_model, ids, mask)
    cfg = OmniConfig.from_file(tiny_ckpt).thinker.text
    broken = dataclasses.replace(RoutingConfig.from_text_config(cfg), norm_topk_prob=False)
    out, _ = run_ours(tiny_ckpt, ids, mask, routing=broken)
    err = np.abs(np.asarray(out["logits"]) - ref_logits)[mask.astype(bool)].max()
    assert err > 1e-2, err


def test_parity_detects_deinterleaved_rope(tiny_ckpt, hf_model, batch):
    """With distinct t/h/w rows, a contiguous (non-interleaved) M-RoPE must break parity."""
    ids, mask = batch
    pos = text_positions(mask).copy()
    pos[1] = pos[0] * 3  # h and w rows move at other rates than t (constant offsets would cancel)
    pos[2] = (pos[0] * 7) % 5
    with torch.no_grad():
        ref = hf_model.thinker(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                               position_ids=torch.tensor(pos).long(), use_cache=False).logits.numpy()
    cfg = OmniConfig.from_file(tiny_ckpt).thinker.text
    model = load_component(tiny_ckpt, lambda r: thinker_text.ThinkerText(cfg, rngs=r),
                           thinker_text.hf_rules(cfg), "thinker.")
    p = pure_params(model)
    valid = mask.astype(bool)
    for interleaved, should_match in ((True, True), (False, False)):
        c = dataclasses.replace(cfg, mrope_interleaved=interleaved)
        opts = StackOptions.uniform(c, backend="dense")
        out = thinker_text.text_forward(p, c, opts, thinker_text.embed_tokens(p, jnp.asarray(ids)),
                                        jnp.asarray(pos), jnp.asarray(mask))
        err = np.abs(np.asarray(out["logits"]) - ref)[valid].max()
        assert (err < 1e-4) == should_match, (interleaved, err)


def test_bf16_matches_reference_bf16(tiny_ckpt, hf_model, batch):
    """Our bf16 run is as close to HF's bf16 run as HF's bf16 run is to HF's fp32 run.

    The rescaled tiny model amplifies bf16 rounding (O(1) router logits flip top-k choices): HF bf16 vs HF
    fp32 differs by ~2.3 on logits of ~8 here, so an absolute bound would be meaningless. We require our
    bf16 error against HF bf16 to stay within 1.5x of that reference noise, and our bf16 error against fp32
    likewise (measured: 2.8 and 2.65 against a noise of 2.33).
    """
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeForConditionalGeneration

    ids, mask = batch
    hf16 = Qwen3OmniMoeForConditionalGeneration.from_pretrained(tiny_ckpt, dtype=torch.bfloat16,
                                                                attn_implementation="eager").eval()
    ref16, _ = hf_outputs(hf16, ids, mask)
    ref32, _ = hf_outputs(hf_model, ids, mask)
    out, _ = run_ours(tiny_ckpt, ids, mask, dtype=jnp.bfloat16)
    assert out["logits"].dtype == jnp.bfloat16
    ours = np.asarray(out["logits"].astype(jnp.float32))
    valid = mask.astype(bool)
    noise = np.abs(ref16 - ref32)[valid].max()
    assert np.abs(ours - ref16)[valid].max() < 1.5 * noise
    assert np.abs(ours - ref32)[valid].max() < 1.5 * noise
    # and the first layers, before routing flips accumulate, agree at bf16 resolution
    agree = (ours.argmax(-1) == ref16.argmax(-1))[valid].mean()
    assert agree >= 0.75, agree
