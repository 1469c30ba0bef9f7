"""The Thinker and Talker MoE blocks against HF's modules built from the tiny text configs.

fp32: max abs error ≤ 1e-5 on outputs of O(1) (reached ~5e-7); the test also checks that dropping the
renormalisation (both) or the shared-expert gate (talker) moves the output by ≫ the tolerance.
bf16: the same block in bf16 (reference casting: router fp32 softmax, weights cast to bf16, silu in fp32
rounded once, per-term bf16 products, bf16 accumulation in ascending expert order, every rounding point
pinned against XLA's excess precision) against HF's eager bf16 run: bit-identical (max abs err 0).
Weights go through ``moe_testutil.moe_hf_rules`` from the on-disk per-expert names (rules coverage test).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
    Qwen3OmniMoeTalkerTextSparseMoeBlock,
    Qwen3OmniMoeThinkerTextSparseMoeBlock,
)

from hf_fixtures import hf_config, randomize_, tiny_config_dict
from omni_jax.config import TextConfig
from omni_jax.moe import RoutingConfig, moe_block
from moe_testutil import moe_hf_rules as hf_rules


def disk_state(block, num_experts):
    """The block's tensors under their on-disk (per-expert) names, as numpy."""
    out = {}
    for name, t in block.state_dict().items():
        a = t.detach().float().numpy()
        if name == "experts.gate_up_proj":
            I = a.shape[1] // 2
            for e in range(num_experts):
                out[f"experts.{e}.gate_proj.weight"] = a[e, :I]
                out[f"experts.{e}.up_proj.weight"] = a[e, I:]
        elif name == "experts.down_proj":
            for e in range(num_experts):
                out[f"experts.{e}.down_proj.weight"] = a[e]
        else:
            out[name] = a
    return out


def fill(rules, tensors, shapes):
    """Fill a param dict from HF tensors with the rules (the test-side loader)."""
    params = {k: np.full(s, np.nan, np.float32) for k, s in shapes.items()}
    covered = set()
    for name, arr in tensors.items():
        hits = [(r, r.match(name)) for r in rules if r.match(name) is not None]
        assert len(hits) == 1, f"{name} matched {len(hits)} rules"
        r, idx = hits[0]
        covered.add(name)
        v = r.to_param(arr)
        slot = params[r.param]
        if r.part is None:
            slot[idx] = v
        else:
            k, n = r.part
            w = slot.shape[-1] // n
            slot[idx + (Ellipsis, slice(k * w, (k + 1) * w))] = v
    for r in rules:
        for name, _ in r.names():
            assert name in tensors, f"rule name {name} not in the HF block"
    assert all(np.isfinite(p).all() for p in params.values()), "a parameter was not filled"
    return {k: jnp.asarray(v) for k, v in params.items()}


def build(kind, dtype=torch.float32):
    cfg_all = hf_config(tiny_config_dict())
    if kind == "thinker":
        hf_text = cfg_all.thinker_config.text_config
        cls = Qwen3OmniMoeThinkerTextSparseMoeBlock
    else:
        hf_text = cfg_all.talker_config.text_config
        cls = Qwen3OmniMoeTalkerTextSparseMoeBlock
    hf_text._experts_implementation = "eager"
    torch.manual_seed(0)
    block = cls(hf_text)
    randomize_(block, seed=3)
    with torch.no_grad():  # O(1) router (top-k free of ties), as the tiny fixtures rescale mlp.gate.weight
        block.gate.weight.copy_(torch.randn(block.gate.weight.shape, generator=torch.Generator().manual_seed(4)))
    block = block.to(dtype).eval()
    cfg = TextConfig.from_hf(hf_text.to_dict())
    H, I, E = cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts
    shapes = {"router": (H, E), "gate_up": (E, H, 2 * I), "down": (E, I, H)}
    if cfg.shared_expert_intermediate_size:
        S = cfg.shared_expert_intermediate_size
        shapes.update(shared_gate_up=(H, 2 * S), shared_down=(S, H), shared_gate=(H, 1))
    params = fill(hf_rules(cfg), disk_state(block, E), shapes)
    return block, cfg, params


@pytest.mark.parametrize("kind", ["thinker", "talker"])
def test_block_matches_hf_fp32(kind):
    block, cfg, params = build(kind)
    x = np.random.default_rng(0).standard_normal((2, 9, cfg.hidden_size)).astype(np.float32)
    with torch.no_grad():
        ref = block(torch.from_numpy(x)).numpy()
    rc = RoutingConfig.from_text_config(cfg)
    for backend in ("tiles", "gather", "dense"):
        y, st = jax.jit(lambda x, p: moe_block(x, p, rc, backend=backend))(jnp.asarray(x), params)
        np.testing.assert_allclose(y, ref, atol=1e-5, rtol=0, err_msg=backend)
    assert int(st.counts.sum()) == 18 * cfg.top_k
    y_bad, _ = moe_block(jnp.asarray(x), params, rc.replace(norm_topk_prob=False))
    assert float(jnp.max(jnp.abs(y_bad - ref))) > 100 * 1e-5
    if kind == "talker":
        ungated = dict(params, shared_gate=jnp.full_like(params["shared_gate"], 30.0))  # sigmoid ≈ 1
        assert float(jnp.max(jnp.abs(moe_block(jnp.asarray(x), ungated, rc)[0] - ref))) > 100 * 1e-5


@pytest.mark.parametrize("kind", ["thinker", "talker"])
def test_block_matches_hf_bf16(kind):
    block, cfg, params = build(kind, torch.bfloat16)
    x = np.random.default_rng(1).standard_normal((1, 12, cfg.hidden_size)).astype(np.float32)
    xt = torch.from_numpy(x).to(torch.bfloat16)
    with torch.no_grad():
        ref = block(xt).float().numpy()
    rc = RoutingConfig.from_text_config(cfg)
    pb = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    for backend in ("tiles", "gather", "ragged"):
        y, _ = jax.jit(lambda x, p: moe_block(x, p, rc, backend=backend))(jnp.asarray(x, jnp.bfloat16), pb)
        assert y.dtype == jnp.bfloat16
        err = np.abs(np.asarray(y, np.float32) - ref)
        assert err.max() == 0.0, f"{backend}: bf16 max abs err {err.max():.3g} (scale {np.abs(ref).max():.3g})"


def test_rules_cover_real_names():
    """Every on-disk tensor name of the real thinker / talker MoE (stacked layers) matches exactly one rule."""
    from omni_jax.config import TALKER_TEXT_DEFAULTS

    for cfg, layers, shared in ((TextConfig(), 48, False), (TextConfig(**TALKER_TEXT_DEFAULTS), 20, True)):
        rules = hf_rules(cfg, hf_prefix="layers.{layer}.mlp.", param_prefix="layers.mlp.", num_layers=layers)
        names = [n for r in rules for n, _ in r.names()]
        assert len(names) == len(set(names)) == layers * (1 + 3 * cfg.num_experts + (4 if shared else 0))
        r0 = rules[1]
        assert r0.match("layers.47.mlp.experts.127.gate_proj.weight" if layers == 48 else
                        "layers.19.mlp.experts.127.gate_proj.weight") is not None
