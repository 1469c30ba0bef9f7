"""Talker decoder (projections aside: see tests/generation/test_talker_prompt.py) against HF ``model.talker``, fp32.

Inputs: random ``inputs_embeds`` [2, 11, H] with left padding on row 1 and distinct t/h/w position rows (as a
multimodal talker prompt has), through ``talker(inputs_embeds=, attention_mask=, position_ids=[3, B, L])``.
Tolerance 1e-4 max abs on the codec logits (|logits| up to ~8; reached ~1e-5: fp32 round-off through 2 MoE
layers with a 3072-way head). A broken variant (the shared expert without its sigmoid gate) must miss by > 100x.
"""

from unittest import mock

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from component_loading import load_component

from omni_jax.config import OmniConfig
from omni_jax.models import talker as talker_mod
from omni_jax.models.common import pure_params
from omni_jax.models.decoder import KVCache, StackOptions
from omni_jax.moe import block as moe_block_mod
from omni_jax.moe.experts import swiglu
from omni_jax.weights.mapping import NameTable, flatten
from omni_jax.weights.rules import prefixed
from omni_jax.weights.safetensors_io import SafetensorsCheckpoint

TOL = 1e-4
B, L = 2, 11
PAD = 3  # left padding of row 1


@pytest.fixture(scope="module")
def setup(tiny_ckpt):
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeForConditionalGeneration

    torch.set_num_threads(1)
    cfg = OmniConfig.from_file(tiny_ckpt)
    module = load_component(tiny_ckpt, lambda r: talker_mod.Talker(cfg.talker, rngs=r),
                            talker_mod.hf_rules(cfg.talker), "talker.")
    hf = Qwen3OmniMoeForConditionalGeneration.from_pretrained(tiny_ckpt, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, cfg.talker.text.hidden_size, generator=g)
    pos = torch.arange(L)[None, None].repeat(3, B, 1)
    pos[1] += torch.tensor([0, 0, 1, 1, 2, 3, 3, 3, 4, 5, 6])  # an image-like block: h and w rows differ from t
    pos[2] += torch.tensor([0, 2, 0, 2, 1, 0, 2, 1, 4, 5, 6])
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, :PAD] = 0
    with torch.no_grad():
        ref = hf.talker(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=False)
    inputs = (jnp.asarray(x.numpy()), jnp.asarray(pos.numpy(), jnp.float32), jnp.asarray(mask.numpy()))
    return cfg, pure_params(module), inputs, ref.logits.numpy(), mask.numpy().astype(bool)


def forward(cfg, params, inputs, **kw):
    return talker_mod.talker_forward(params, cfg.talker, StackOptions.uniform(cfg.talker.text), *inputs, **kw)


def max_err(ours, ref, mask):
    return float(np.abs(np.asarray(ours) - ref)[mask].max())


def test_hf_rules_cover_the_checkpoint_exactly(tiny_ckpt, setup):
    cfg, params, *_ = setup
    shapes = {k: tuple(v.shape) for k, v in flatten(params).items()}
    table = NameTable(prefixed(talker_mod.hf_rules(cfg.talker), "talker.", ""), shapes)  # every param covered once
    on_disk = {n for n in SafetensorsCheckpoint(tiny_ckpt).names() if n.startswith("talker.")}
    assert set(table.names()) == on_disk


def test_logits_match_hf(setup):
    cfg, params, inputs, ref, mask = setup
    out = forward(cfg, params, inputs)
    err = max_err(out["logits"], ref, mask)
    print(f"talker logits max abs err {err:.2e} (|logits| max {np.abs(ref).max():.1f})")
    assert err <= TOL


def test_cached_decode_matches_full_forward(setup):
    """Prefill L-1 positions into a cache, then the last one as a decode step: same logits as HF's full pass."""
    cfg, params, (x, pos, mask), ref, m = setup
    cache = KVCache.create(cfg.talker.text, B, 32, jnp.float32)
    pre = forward(cfg, params, (x[:, :-1], pos[:, :, :-1], mask[:, :-1]), cache=cache, logits_at="none")
    step = forward(cfg, params, (x[:, -1:], pos[:, :, -1:], mask[:, -1:]), cache=pre["cache"], logits_at="last")
    assert max_err(step["logits"][:, 0], ref[:, -1], m[:, -1]) <= TOL


def test_ungated_shared_expert_is_caught(setup):
    """Drop the sigmoid(shared_expert_gate(x)) factor: the parity check must fail by far."""
    cfg, params, inputs, ref, mask = setup

    def ungated(x, p):
        dt = x.dtype
        return swiglu(x @ p["shared_gate_up"].astype(dt)) @ p["shared_down"].astype(dt)

    with mock.patch.object(moe_block_mod, "shared_expert", ungated):
        err = max_err(forward(cfg, params, inputs)["logits"], ref, mask)
    print(f"ungated shared expert: err {err:.2e}")
    assert err > 100 * TOL
