"""One Thinker decoder layer at the real widths, omni_jax (JAX) beside HF's layer, in the same run.

    python -m omni_jax.bench thinker-layer [--json] [--dtypes float32,bfloat16] [--prefill 512] [--kv 512]
        [--depths 1,2,4,8] [--experts 128]

Layer: hidden 2048, 32/4 heads x 128, 128 experts x 768, top-8, interleaved M-RoPE; random N(0, 0.02)
weights; batch 1. Prefill = ``--prefill`` tokens into an empty cache; decode = one token against a cache
holding ``--kv`` tokens. HF's figure is the faster of its two MoE experts implementations (``eager``,
``grouped_mm``) for each row. The machine's limits are measured in the same run: decode is bounded by the bytes
of weights (and KV cache) a step must read over the measured memory read bandwidth; prefill by its
FLOPs over the measured matmul throughput. ``share`` = limit time / measured time.

Depth rows (fp32): one decode step through ``d`` stacked layers for each ``d`` in ``--depths``, with a tap
after layer ``d // 2`` (as the Talker reads a middle Thinker layer, which splits the layer scan), reported
per layer beside ``d`` HF layers run in sequence: the per-layer cost must not grow with depth. A decode step
reads only the top-8 experts, so ``--experts`` (fewer experts per layer) leaves the per-layer cost alone and
shrinks the memory (128 experts: 2.4 GB per layer on each side, one side at a time).
Findings and what was done about them: docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.bench.limits import matmul_flops, memory_read_bandwidth
from omni_jax.bench.timing import emit_json, print_table, time_fn
from omni_jax.config import TextConfig


def layer_config(talker: bool = False) -> TextConfig:
    from omni_jax.config import TALKER_TEXT_DEFAULTS

    base = TextConfig(**TALKER_TEXT_DEFAULTS) if talker else TextConfig()
    return dataclasses.replace(base, num_layers=1)


def decode_bytes(cfg: TextConfig, kv: int, itemsize: int) -> int:
    h, d = cfg.hidden_size, cfg.head_dim
    attn = h * cfg.num_heads * d * 2 + h * cfg.num_kv_heads * d * 2
    experts = cfg.top_k * 3 * h * cfg.moe_intermediate_size + 3 * h * cfg.shared_expert_intermediate_size
    router = h * cfg.num_experts + (h if cfg.shared_expert_intermediate_size else 0)
    cache = 2 * kv * cfg.num_kv_heads * d
    return (attn + experts + router + cache) * itemsize


def prefill_flops(cfg: TextConfig, n: int) -> float:
    h, d = cfg.hidden_size, cfg.head_dim
    proj = 2 * n * (h * cfg.num_heads * d * 2 + h * cfg.num_kv_heads * d * 2)
    experts = 2 * n * cfg.top_k * 3 * h * cfg.moe_intermediate_size
    router = 2 * n * h * cfg.num_experts
    scores = 2 * 2 * cfg.num_heads * d * n * (n + 1) / 2  # causal QK^T and PV
    return proj + experts + router + scores


def jax_decode_stack(cfg: TextConfig, kv: int, tap: int | None, repeat: int, seed: int = 0) -> dict:
    """One fp32 decode step through ``cfg.num_layers`` stacked layers (a tap after layer ``tap``)."""
    from omni_jax.models.decoder import KVCache

    layers, step = jax_stack(cfg, jnp.float32, seed, tap)
    cache = KVCache.create(cfg, 1, kv + 1, jnp.float32)
    cache = KVCache(cache.k, cache.v, cache.valid.at[:, :kv].set(True), jnp.asarray(kv, jnp.int32))
    x1 = jnp.asarray(np.random.default_rng(seed).standard_normal((1, 1, cfg.hidden_size)), jnp.float32)
    pos1 = jnp.full((3, 1, 1), float(kv))
    out = time_fn(lambda: step(layers, x1, pos1, cache), warmup=2, repeat=repeat)
    out["temp_bytes"] = step.lower(layers, x1, pos1, cache).compile().memory_analysis().temp_size_in_bytes
    return out


def hf_decode_stack(cfg: TextConfig, kv: int, repeat: int) -> dict:
    """``cfg.num_layers`` HF Thinker decoder layers run in sequence for one decode token (fp32)."""
    import torch
    from transformers.cache_utils import DynamicCache

    layers, hc, rope = _hf_layers(cfg, "float32", cfg.num_layers)

    def run(x, start, cache):
        pos = torch.arange(start, start + x.shape[1]).view(1, 1, -1).expand(3, 1, -1)
        pe = rope(x, pos)
        for layer in layers:
            x = layer(x, attention_mask=None, position_ids=pos[0], past_key_values=cache, position_embeddings=pe)
        return x

    def timed():
        with torch.no_grad():
            cache = DynamicCache(config=hc)
            run(torch.randn(1, kv, cfg.hidden_size), 0, cache)
            x1 = torch.randn(1, 1, cfg.hidden_size)

            def dec():
                out = run(x1, kv, cache)
                cache.crop(-1)
                return out

            return time_fn(dec, warmup=2, repeat=repeat)

    return best_of_experts_implementations(hc, timed)


def jax_stack(cfg: TextConfig, dtype, seed: int = 0, tap: int | None = None):
    """``cfg.num_layers`` random decoder layers (norms = 1; per-layer projection views, as the decode engines
    read them) and a jitted cached forward ``(layers, x, pos, cache) -> (y, tapped hidden, cache)``."""
    from flax import nnx

    from omni_jax.models.common import pure_params
    from omni_jax.models.decoder import (DecoderLayers, KVCache, StackOptions, decoder_stack, stack_mask,
                                         text_cos_sin, with_layer_views)

    layers = pure_params(DecoderLayers(cfg, nnx.Rngs(seed), dtype=dtype))
    layers = jax.tree.map(lambda a: a if a.ndim > 2 else jnp.ones_like(a), layers)
    layers = with_layer_views(layers)
    opts = StackOptions.uniform(cfg, taps=() if tap is None else (tap,))

    def forward(layers, x, pos, cache):
        cos, sin = text_cos_sin(pos, cfg, x.dtype)
        am = jnp.ones(x.shape[:2], jnp.int32)
        mask, valid = stack_mask(am, cache, cache.length, x.shape[1])
        y, kv_, _, hidden = decoder_stack(layers, x, cos, sin, mask, cfg, opts, cache=cache, slot=cache.length,
                                          token_mask=am.astype(bool))
        return y, hidden, KVCache(kv_[0], kv_[1], valid, cache.length + x.shape[1])

    return layers, jax.jit(forward)


def jax_layer(cfg: TextConfig, dtype, n_prefill: int, kv: int, seed: int = 0):
    from omni_jax.models.decoder import KVCache

    layers, step = jax_stack(cfg, dtype, seed)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((1, n_prefill, cfg.hidden_size)), dtype)
    pos = jnp.broadcast_to(jnp.arange(n_prefill, dtype=jnp.float32)[None, None], (3, 1, n_prefill))
    empty = KVCache.create(cfg, 1, n_prefill, dtype)
    prefill = time_fn(lambda: step(layers, x, pos, empty), warmup=1, repeat=4)
    filled = KVCache.create(cfg, 1, kv + 1, dtype)
    xk = jnp.asarray(rng.standard_normal((1, kv, cfg.hidden_size)), dtype)
    posk = jnp.broadcast_to(jnp.arange(kv, dtype=jnp.float32)[None, None], (3, 1, kv))
    _, _, filled = step(layers, xk, posk, filled)
    x1 = x[:, :1]
    pos1 = jnp.full((3, 1, 1), float(kv))
    decode = time_fn(lambda: step(layers, x1, pos1, filled), warmup=2, repeat=16)
    return prefill, decode, layers


HF_EXPERTS_IMPLEMENTATIONS = ("eager", "grouped_mm")


def best_of_experts_implementations(hc, timed):
    """``timed()`` under each of HF's MoE experts implementations (``eager`` loops over the chosen experts,
    ``grouped_mm`` is what ``from_pretrained`` picks where torch supports it); the faster one is HF's figure."""
    best = None
    for impl in HF_EXPERTS_IMPLEMENTATIONS:
        hc._experts_implementation = impl
        try:
            t = timed()
        except (RuntimeError, NotImplementedError, ValueError):  # an implementation torch cannot run here
            continue
        t["experts_implementation"] = impl
        if best is None or t["median_s"] < best["median_s"]:
            best = t
    return best


def _hf_layers(cfg: TextConfig, dtype_name: str, n: int, talker: bool = False):
    """n HF Thinker (or Talker) decoder layers with N(0, 0.02) weights and unit norms, their config and rope."""
    import torch
    from transformers.models.qwen3_omni_moe import configuration_qwen3_omni_moe as hfc
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
        Qwen3OmniMoeTalkerDecoderLayer, Qwen3OmniMoeThinkerTextDecoderLayer, Qwen3OmniMoeThinkerTextRotaryEmbedding)

    torch.set_num_threads(2)
    config_cls = hfc.Qwen3OmniMoeTalkerTextConfig if talker else hfc.Qwen3OmniMoeTextConfig
    extra = {"shared_expert_intermediate_size": cfg.shared_expert_intermediate_size} if talker else {}
    hc = config_cls(**extra,
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=n,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        moe_intermediate_size=cfg.moe_intermediate_size, num_experts=cfg.num_experts,
        num_experts_per_tok=cfg.top_k, norm_topk_prob=True, rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta,
                         "mrope_section": list(cfg.mrope_section), "interleaved": True})
    hc._attn_implementation = "sdpa"
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    layers = []
    for i in range(n):
        layer = (Qwen3OmniMoeTalkerDecoderLayer if talker else Qwen3OmniMoeThinkerTextDecoderLayer)(hc, i)
        with torch.no_grad():
            for p in layer.parameters():
                if p.ndim > 1:
                    p.normal_(0, 0.02)
                else:
                    p.fill_(1.0)
        layers.append(layer.to(dtype).eval())
    return layers, hc, Qwen3OmniMoeThinkerTextRotaryEmbedding(hc)


def hf_layer(cfg: TextConfig, dtype_name: str, n_prefill: int, kv: int, talker: bool = False):
    """HF's Thinker (or, with ``talker``, Talker) decoder layer timed like ``jax_layer``."""
    import torch
    from transformers.cache_utils import DynamicCache

    (layer,), hc, rope = _hf_layers(cfg, dtype_name, 1, talker)
    dtype = getattr(torch, dtype_name)
    x = torch.randn(1, n_prefill, cfg.hidden_size, dtype=dtype)

    def run(x, start, cache):
        pos = torch.arange(start, start + x.shape[1]).view(1, 1, -1).expand(3, 1, -1)
        pe = rope(x, pos)
        return layer(x, attention_mask=None, position_ids=pos[0], past_key_values=cache, position_embeddings=pe)

    def timed_prefill():
        with torch.no_grad():
            return time_fn(lambda: run(x, 0, DynamicCache(config=hc)), warmup=1, repeat=4)

    def timed_decode():
        with torch.no_grad():
            cache = DynamicCache(config=hc)
            run(torch.randn(1, kv, cfg.hidden_size, dtype=dtype), 0, cache)
            x1 = x[:, :1]

            def dec():
                out = run(x1, kv, cache)
                cache.crop(-1)
                return out

            return time_fn(dec, warmup=2, repeat=16)

    return best_of_experts_implementations(hc, timed_prefill), best_of_experts_implementations(hc, timed_decode)


def depth_rows(args, bw: float, results: dict) -> list[list]:
    """Per-layer fp32 decode cost at each depth of ``--depths`` (tap after the middle layer), ours then HF's."""
    import gc

    rows, results["depth"] = [], []
    for d in [int(x) for x in args.depths.split(",") if x]:
        cfg = dataclasses.replace(layer_config(), num_layers=d, num_experts=args.experts)
        tap = d // 2 - 1 if d > 1 else None
        ours = jax_decode_stack(cfg, args.kv, tap, repeat=args.repeat)
        gc.collect()
        theirs = None if args.no_hf else hf_decode_stack(cfg, args.kv, repeat=args.repeat)
        gc.collect()
        floor = d * decode_bytes(cfg, args.kv, 4) / bw
        r = dict(layers=d, tap_after_layer=tap, experts=args.experts, jax_ms_per_layer=1e3 * ours["median_s"] / d,
                 hf_ms_per_layer=None if theirs is None else 1e3 * theirs["median_s"] / d,
                 floor_ms_per_layer=1e3 * floor / d, jax_share_of_bandwidth=floor / ours["median_s"],
                 jax_temp_mb=ours["temp_bytes"] / 1e6)
        if theirs:
            r["speedup_vs_hf"] = theirs["median_s"] / ours["median_s"]
        results["depth"].append(r)
        rows.append(["float32", f"decode, {d} layer{'s' if d > 1 else ''}", f"kv {args.kv}, per layer",
                     r["jax_ms_per_layer"] / 1e3, (r["hf_ms_per_layer"] or 0) / 1e3, r.get("speedup_vs_hf"),
                     r["floor_ms_per_layer"] / 1e3, r["jax_share_of_bandwidth"]])
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m omni_jax.bench thinker-layer", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--kv", type=int, default=512)
    p.add_argument("--depths", default="1,2,4,8", help="layer counts of the per-layer decode rows ('' = none)")
    p.add_argument("--experts", type=int, default=16,
                   help="experts per layer in the depth rows (128 at depth 8 needs > 24 GB)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs of each depth row (median reported)")
    p.add_argument("--no-hf", action="store_true", help="skip the HF reference")
    args = p.parse_args(argv)
    cfg = layer_config()
    bw = memory_read_bandwidth()
    results = {"machine": {"memory_read_GBps": bw / 1e9}, "prefill_tokens": args.prefill, "kv": args.kv}
    rows = []
    for dt in [x for x in args.dtypes.split(",") if x]:
        jdt = jnp.dtype(dt)
        mm = matmul_flops(dt)
        results["machine"][f"matmul_{dt}_GFLOPs"] = mm / 1e9
        jp, jd, _ = jax_layer(cfg, jdt, args.prefill, args.kv)
        hp, hd = (None, None) if args.no_hf else hf_layer(cfg, dt, args.prefill, args.kv)
        dec_limit = decode_bytes(cfg, args.kv, jdt.itemsize) / bw
        pre_limit = prefill_flops(cfg, args.prefill) / mm
        r = {
            "jax_prefill_s": jp["median_s"], "jax_decode_ms": jd["median_s"] * 1e3,
            "hf_prefill_s": hp["median_s"] if hp else None, "hf_decode_ms": hd["median_s"] * 1e3 if hd else None,
            "decode_limit_ms": dec_limit * 1e3, "prefill_limit_s": pre_limit,
            "decode_share_of_bandwidth_limit": dec_limit / jd["median_s"],
            "prefill_share_of_matmul_limit": pre_limit / jp["median_s"],
        }
        if hp:
            r["decode_speedup_vs_hf"] = hd["median_s"] / jd["median_s"]
            r["prefill_speedup_vs_hf"] = hp["median_s"] / jp["median_s"]
        results[dt] = r
        rows.append([dt, "prefill", f"{args.prefill} tok", r["jax_prefill_s"], r["hf_prefill_s"],
                     r.get("prefill_speedup_vs_hf"), r["prefill_limit_s"], r["prefill_share_of_matmul_limit"]])
        rows.append([dt, "decode", f"kv {args.kv}", r["jax_decode_ms"] / 1e3, (r["hf_decode_ms"] or 0) / 1e3,
                     r.get("decode_speedup_vs_hf"), r["decode_limit_ms"] / 1e3, r["decode_share_of_bandwidth_limit"]])
    rows += depth_rows(args, bw, results)
    print_table(f"thinker-layer (memory read {bw / 1e9:.1f} GB/s measured)",
                ["dtype", "phase", "size", "omni_jax s", "HF s", "HF/omni_jax", "limit s", "share of limit"], rows)
    if args.json:
        emit_json(results)
    return results


if __name__ == "__main__":
    main()
