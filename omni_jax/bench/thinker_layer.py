"""One Thinker decoder layer at the real widths, omni_jax (JAX) beside HF's layer, in the same run.

    python -m omni_jax.bench thinker-layer [--json] [--dtypes float32,bfloat16] [--prefill 512] [--kv 512]

Layer: hidden 2048, 32/4 heads x 128, 128 experts x 768, top-8, interleaved M-RoPE; random N(0, 0.02)
weights; batch 1. Prefill = ``--prefill`` tokens into an empty cache; decode = one token against a cache
holding ``--kv`` tokens. The machine's limits are measured in the same run: decode is bounded by the bytes
of weights (and KV cache) a step must read over the measured memory read bandwidth; prefill by its
FLOPs over the measured matmul throughput. ``share`` = limit time / measured time.
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


def jax_layer(cfg: TextConfig, dtype, n_prefill: int, kv: int, seed: int = 0):
    from flax import nnx

    from omni_jax.models.common import pure_params
    from omni_jax.models.decoder import DecoderLayers, KVCache, StackOptions, decoder_stack, stack_mask, text_cos_sin

    layers = pure_params(DecoderLayers(cfg, nnx.Rngs(seed), dtype=dtype))
    layers = jax.tree.map(lambda a: a if a.ndim > 2 else jnp.ones_like(a), layers)  # norms = 1
    opts = StackOptions.uniform(cfg)

    def forward(layers, x, pos, cache):
        cos, sin = text_cos_sin(pos, cfg, x.dtype)
        am = jnp.ones(x.shape[:2], jnp.int32)
        mask, valid = stack_mask(am, cache, cache.length, x.shape[1])
        y, kv_, _, _ = decoder_stack(layers, x, cos, sin, mask, cfg, opts, cache=cache, slot=cache.length,
                                     token_mask=am.astype(bool))
        return y, KVCache(kv_[0], kv_[1], valid, cache.length + x.shape[1])

    step = jax.jit(forward)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((1, n_prefill, cfg.hidden_size)), dtype)
    pos = jnp.broadcast_to(jnp.arange(n_prefill, dtype=jnp.float32)[None, None], (3, 1, n_prefill))
    empty = KVCache.create(cfg, 1, n_prefill, dtype)
    prefill = time_fn(lambda: step(layers, x, pos, empty), warmup=1, repeat=4)
    filled = KVCache.create(cfg, 1, kv + 1, dtype)
    xk = jnp.asarray(rng.standard_normal((1, kv, cfg.hidden_size)), dtype)
    posk = jnp.broadcast_to(jnp.arange(kv, dtype=jnp.float32)[None, None], (3, 1, kv))
    _, filled = step(layers, xk, posk, filled)
    x1 = x[:, :1]
    pos1 = jnp.full((3, 1, 1), float(kv))
    decode = time_fn(lambda: step(layers, x1, pos1, filled), warmup=2, repeat=16)
    return prefill, decode, layers


def hf_layer(cfg: TextConfig, dtype_name: str, n_prefill: int, kv: int, talker: bool = False):
    """HF's Thinker (or, with ``talker``, Talker) decoder layer timed like ``jax_layer``."""
    import torch
    from transformers.cache_utils import DynamicCache
    from transformers.models.qwen3_omni_moe import configuration_qwen3_omni_moe as hfc
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
        Qwen3OmniMoeTalkerDecoderLayer, Qwen3OmniMoeThinkerTextDecoderLayer, Qwen3OmniMoeThinkerTextRotaryEmbedding)

    torch.set_num_threads(2)
    config_cls = hfc.Qwen3OmniMoeTalkerTextConfig if talker else hfc.Qwen3OmniMoeTextConfig
    extra = {"shared_expert_intermediate_size": cfg.shared_expert_intermediate_size} if talker else {}
    hc = config_cls(**extra,
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=1,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        moe_intermediate_size=cfg.moe_intermediate_size, num_experts=cfg.num_experts,
        num_experts_per_tok=cfg.top_k, norm_topk_prob=True, rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta,
                         "mrope_section": list(cfg.mrope_section), "interleaved": True})
    hc._attn_implementation = "sdpa"
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    layer = (Qwen3OmniMoeTalkerDecoderLayer if talker else Qwen3OmniMoeThinkerTextDecoderLayer)(hc, 0)
    with torch.no_grad():
        for p in layer.parameters():
            if p.ndim > 1:
                p.normal_(0, 0.02)
            else:
                p.fill_(1.0)
    layer = layer.to(dtype).eval()
    rope = Qwen3OmniMoeThinkerTextRotaryEmbedding(hc)
    x = torch.randn(1, n_prefill, cfg.hidden_size, dtype=dtype)

    def run(x, start, cache):
        pos = torch.arange(start, start + x.shape[1]).view(1, 1, -1).expand(3, 1, -1)
        pe = rope(x, pos)
        return layer(x, attention_mask=None, position_ids=pos[0], past_key_values=cache, position_embeddings=pe)

    with torch.no_grad():
        prefill = time_fn(lambda: run(x, 0, DynamicCache(config=hc)), warmup=1, repeat=4)
        cache = DynamicCache(config=hc)
        run(torch.randn(1, kv, cfg.hidden_size, dtype=dtype), 0, cache)
        x1 = x[:, :1]

        def dec():
            out = run(x1, kv, cache)
            cache.crop(-1)
            return out

        decode = time_fn(dec, warmup=2, repeat=16)
    return prefill, decode


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m omni_jax.bench thinker-layer", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--kv", type=int, default=512)
    p.add_argument("--no-hf", action="store_true", help="skip the HF reference")
    args = p.parse_args(argv)
    cfg = layer_config()
    bw = memory_read_bandwidth()
    results = {"machine": {"memory_read_GBps": bw / 1e9}, "prefill_tokens": args.prefill, "kv": args.kv}
    rows = []
    for dt in args.dtypes.split(","):
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
    print_table(f"thinker-layer (memory read {bw / 1e9:.1f} GB/s measured)",
                ["dtype", "phase", "size", "omni_jax s", "HF s", "HF/omni_jax", "limit s", "share of limit"], rows)
    if args.json:
        emit_json(results)
    return results


if __name__ == "__main__":
    main()
