"""One Thinker decoder layer at the real widths, omni_jax (JAX) beside HF's layer, in the same run.

    python -m omni_jax.bench thinker-layer [--json] [--dtypes float32,bfloat16] [--prefill 512] [--kv 512]
        [--decode-tokens 16,1] [--depths 1,2,4,8] [--experts 128]

Layer: hidden 2048, 32/4 heads x 128, 128 experts x 768, top-8, interleaved M-RoPE; random N(0, 0.02)
weights; batch 1. Prefill = ``--prefill`` tokens into an empty cache; decode = one token against a cache
holding ``--kv`` tokens. With ``--decode-tokens 16,1`` (the default) there are two decode rows: the token cycles
through 16 distinct tokens (each step reads other experts, from memory, as a real model's step reads each
layer's), or is the same every step (the same experts: a lone layer's 225 MB partly stay in the 480 MB L3
between repeats, on both sides). HF's figure is the faster of its two MoE experts implementations (``eager``,
``grouped_mm``) for each row, picked by a short run of the two (``side_by_side``). Both sides are built before
timing and their timed runs interleaved (``timing.time_interleaved``: per round, three untimed runs and one
timed run of each, the order rotated), so a drift in the shared host's load reaches both medians alike: single
decode steps here moved by up to 1.8x from run to run. In a deep model each step streams every layer from
memory, as the 16-token decode row and the depth rows at 8 layers do. The machine's limits are measured in the
same run: decode is bounded by the bytes of weights (and KV cache) a step must read over the measured memory
read bandwidth; prefill by its FLOPs over the measured matmul throughput. ``share`` = limit time / measured time.

Depth rows (fp32): one decode step through ``d`` stacked layers for each ``d`` in ``--depths``, with a tap
after layer ``d // 2`` (as the Talker reads a middle Thinker layer, which splits the layer scan), reported
per layer beside ``d`` HF layers run in sequence: the per-layer cost must not grow with depth. A decode step
reads only the top-8 experts, so ``--experts`` (fewer experts per layer) leaves the per-layer cost alone and
shrinks the memory (128 experts: 2.4 GB per layer on each side; both sides are held at once).
Findings and what was done about them: docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.bench.limits import matmul_flops, memory_read_bandwidth
from omni_jax.bench.timing import emit_json, print_table, time_interleaved
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


def jax_decode_stack(cfg: TextConfig, kv: int, tap: int | None, seed: int = 0):
    """One fp32 decode step through ``cfg.num_layers`` stacked layers (a tap after layer ``tap``), as a
    no-argument function, and the compiled step's temporaries in bytes."""
    from omni_jax.models.decoder import KVCache

    layers, forward = jax_stack(cfg, jnp.float32, seed, tap)
    step = jax.jit(forward, donate_argnums=3)
    cache = KVCache.create(cfg, 1, kv + 1, jnp.float32)
    cache = KVCache(cache.k, cache.v, cache.valid.at[:, :kv].set(True), jnp.asarray(kv, jnp.int32))
    x1 = jnp.asarray(np.random.default_rng(seed).standard_normal((1, 1, cfg.hidden_size)), jnp.float32)
    pos1 = jnp.full((3, 1, 1), float(kv))
    temp = step.lower(layers, x1, pos1, cache).compile().memory_analysis().temp_size_in_bytes
    return repeated_decode(step, layers, x1, pos1, cache), temp


def repeated_decode(step, layers, tokens, pos1, cache):
    """A no-argument function running the (cache-donating) ``step`` at the same position each call, for the
    next of ``tokens`` ([1, 1, H] hidden states, cycled): the cache it returns, its length set back, is the next
    call's."""
    from omni_jax.models.decoder import KVCache

    tokens = tokens if isinstance(tokens, (list, tuple)) else [tokens]
    state = {"cache": cache, "calls": 0}
    length = np.int32(cache.length)  # a host scalar: the donated cache's own length is gone after a call

    def run():
        x1 = tokens[state["calls"] % len(tokens)]
        state["calls"] += 1
        y, _, c = step(layers, x1, pos1, state["cache"])
        state["cache"] = KVCache(c.k, c.v, c.valid, length)
        return y

    return run


def hf_decode_stack(cfg: TextConfig, kv: int) -> dict:
    """``cfg.num_layers`` HF Thinker decoder layers run in sequence for one decode token (fp32), as
    ``{experts implementation: no-argument function}``."""
    import torch
    from transformers.cache_utils import DynamicCache

    layers, hc, rope = _hf_layers(cfg, "float32", cfg.num_layers)

    def run(x, start, cache):
        pos = torch.arange(start, start + x.shape[1]).view(1, 1, -1).expand(3, 1, -1)
        pe = rope(x, pos)
        for layer in layers:
            x = layer(x, attention_mask=None, position_ids=pos[0], past_key_values=cache, position_embeddings=pe)
        return x

    cache = DynamicCache(config=hc)
    with torch.no_grad():
        run(torch.randn(1, kv, cfg.hidden_size), 0, cache)
    x1 = torch.randn(1, 1, cfg.hidden_size)

    def dec():
        with torch.no_grad():
            out = run(x1, kv, cache)
            cache.crop(-1)
            return out

    return runnable_experts_implementations(hc, dec)


def jax_stack(cfg: TextConfig, dtype, seed: int = 0, tap: int | None = None):
    """``cfg.num_layers`` random decoder layers (norms = 1; per-layer projection views, as the decode engines
    read them) and a cached forward ``(layers, x, pos, cache) -> (y, tapped hidden, cache)`` to jit. The decode
    rows jit it with the cache donated, as the generation engines donate their state: the step then writes
    the new slot in place instead of copying the whole cache."""
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

    return layers, forward


def jax_layer(cfg: TextConfig, dtype, n_prefill: int, kv: int, seed: int = 0, decode_tokens: tuple = (1,)):
    """One decoder layer as no-argument functions: prefill of ``n_prefill`` tokens into an empty cache, and
    ``{n: decode}`` for each n of ``decode_tokens``: one decode token against a cache holding ``kv`` tokens, the
    token cycling through the first n of the prefill's tokens (n = 1: the same token, so the same experts,
    every call)."""
    from omni_jax.models.decoder import KVCache

    layers, forward = jax_stack(cfg, dtype, seed)
    step, decode_step = jax.jit(forward), jax.jit(forward, donate_argnums=3)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((1, n_prefill, cfg.hidden_size)), dtype)
    pos = jnp.broadcast_to(jnp.arange(n_prefill, dtype=jnp.float32)[None, None], (3, 1, n_prefill))
    empty = KVCache.create(cfg, 1, n_prefill, dtype)
    filled = KVCache.create(cfg, 1, kv + 1, dtype)
    xk = jnp.asarray(rng.standard_normal((1, kv, cfg.hidden_size)), dtype)
    posk = jnp.broadcast_to(jnp.arange(kv, dtype=jnp.float32)[None, None], (3, 1, kv))
    _, _, filled = step(layers, xk, posk, filled)
    pos1 = jnp.full((3, 1, 1), float(kv))
    decodes = {n: repeated_decode(decode_step, layers, [x[:, i:i + 1] for i in range(n)], pos1,
                                  jax.tree.map(jnp.copy, filled)) for n in decode_tokens}
    return (lambda: step(layers, x, pos, empty)), decodes


HF_EXPERTS_IMPLEMENTATIONS = ("eager", "grouped_mm")


def runnable_experts_implementations(hc, fn) -> dict:
    """``{impl: fn run under HF's MoE experts implementation impl}`` for each of ``HF_EXPERTS_IMPLEMENTATIONS``
    that runs here (``eager`` loops over the chosen experts, ``grouped_mm`` is what ``from_pretrained`` picks
    where torch supports it). Each is run once to find out."""
    out = {}
    for impl in HF_EXPERTS_IMPLEMENTATIONS:
        def run(impl=impl):
            hc._experts_implementation = impl
            return fn()
        try:
            run()
        except (RuntimeError, NotImplementedError, ValueError):  # an implementation torch cannot run here
            continue
        out[impl] = run
    return out


def side_by_side(ours, theirs: dict, warmup: int, repeat: int):
    """Our function and HF's timed with their runs interleaved; returns our timing and HF's (``None`` without
    HF), which names its experts implementation. With several HF implementations (``{impl: fn}``) the faster is
    chosen first, by a short interleaved run of those alone, and only it is timed beside ours: in a rotation of
    three, ours follows an HF run in two rounds of three and HF's in one, and that lopsidedness alone moved our
    one-layer decode step from 8.5-8.9 to 9.4-9.6 ms (HF's 10.0-10.2 ms either way)."""
    if not theirs:
        return time_interleaved({"omni_jax": ours}, warmup=warmup, repeat=repeat)["omni_jax"], None
    impl = next(iter(theirs))
    if len(theirs) > 1:
        pick = time_interleaved(theirs, warmup=warmup, repeat=max(3, repeat // 4))
        impl = min(pick, key=lambda k: pick[k]["median_s"])
    t = time_interleaved({"omni_jax": ours, "hf": theirs[impl]}, warmup=warmup, repeat=repeat)
    return t["omni_jax"], dict(t["hf"], experts_implementation=impl)


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


def hf_layer(cfg: TextConfig, dtype_name: str, n_prefill: int, kv: int, talker: bool = False,
             decode_tokens: tuple = (1,)):
    """HF's Thinker (or, with ``talker``, Talker) decoder layer as ``jax_layer``'s functions, each function a
    ``{experts implementation: function}`` dict: (prefill, {n: decode})."""
    import torch
    from transformers.cache_utils import DynamicCache

    (layer,), hc, rope = _hf_layers(cfg, dtype_name, 1, talker)
    dtype = getattr(torch, dtype_name)
    x = torch.randn(1, n_prefill, cfg.hidden_size, dtype=dtype)

    def run(x, start, cache):
        pos = torch.arange(start, start + x.shape[1]).view(1, 1, -1).expand(3, 1, -1)
        pe = rope(x, pos)
        return layer(x, attention_mask=None, position_ids=pos[0], past_key_values=cache, position_embeddings=pe)

    def prefill():
        with torch.no_grad():
            return run(x, 0, DynamicCache(config=hc))

    def decode(n):
        cache = DynamicCache(config=hc)
        with torch.no_grad():
            run(torch.randn(1, kv, cfg.hidden_size, dtype=dtype), 0, cache)
        tokens, calls = [x[:, i:i + 1] for i in range(n)], [0]

        def dec():
            with torch.no_grad():
                out = run(tokens[calls[0] % n], kv, cache)
                calls[0] += 1
                cache.crop(-1)
                return out

        return runnable_experts_implementations(hc, dec)

    return runnable_experts_implementations(hc, prefill), {n: decode(n) for n in decode_tokens}


def depth_rows(args, bw: float, results: dict) -> list[list]:
    """Per-layer fp32 decode cost at each depth of ``--depths`` (tap after the middle layer), ours then HF's."""
    import gc

    rows, results["depth"] = [], []
    for d in [int(x) for x in args.depths.split(",") if x]:
        cfg = dataclasses.replace(layer_config(), num_layers=d, num_experts=args.experts)
        tap = d // 2 - 1 if d > 1 else None
        ours_fn, temp = jax_decode_stack(cfg, args.kv, tap)
        ours, theirs = side_by_side(ours_fn, {} if args.no_hf else hf_decode_stack(cfg, args.kv),
                                    warmup=2, repeat=args.repeat)
        ours["temp_bytes"] = temp
        del ours_fn
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
    import gc

    p = argparse.ArgumentParser(prog="python -m omni_jax.bench thinker-layer", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--kv", type=int, default=512)
    p.add_argument("--depths", default="1,2,4,8", help="layer counts of the per-layer decode rows ('' = none)")
    p.add_argument("--experts", type=int, default=16,
                   help="experts per layer in the depth rows (128 at depth 8 needs > 24 GB)")
    p.add_argument("--repeat", type=int, default=15, help="timed runs of each depth row (median reported)")
    p.add_argument("--layer-repeat", type=int, default=5,
                   help="timed prefill runs of the one-layer rows (decode: 4x as many; median reported)")
    p.add_argument("--decode-tokens", default="16,1",
                   help="one decode row per count: the decode token cycles through that many distinct tokens "
                        "(1 = the same token every step, so the same experts: 225 MB that partly stay in L3)")
    p.add_argument("--no-hf", action="store_true", help="skip the HF reference")
    args = p.parse_args(argv)
    try:
        decode_tokens = tuple(int(n) for n in args.decode_tokens.split(","))
    except ValueError:
        p.error(f"--decode-tokens: comma-separated token counts expected, got {args.decode_tokens!r}")
    if not all(1 <= n <= args.prefill for n in decode_tokens):
        p.error(f"--decode-tokens: each count must be 1..--prefill ({args.prefill}), got {args.decode_tokens!r}")
    cfg = layer_config()
    bw = memory_read_bandwidth()
    results = {"machine": {"memory_read_GBps": bw / 1e9}, "prefill_tokens": args.prefill, "kv": args.kv}
    rows = []
    for dt in [x for x in args.dtypes.split(",") if x]:
        jdt = jnp.dtype(dt)
        mm = matmul_flops(dt)
        results["machine"][f"matmul_{dt}_GFLOPs"] = mm / 1e9
        jp_fn, jd_fns = jax_layer(cfg, jdt, args.prefill, args.kv, decode_tokens=decode_tokens)
        hp_fns, hd_fns = ({}, {n: {} for n in decode_tokens}) if args.no_hf else hf_layer(
            cfg, dt, args.prefill, args.kv, decode_tokens=decode_tokens)
        jp, hp = side_by_side(jp_fn, hp_fns, warmup=1, repeat=args.layer_repeat)
        decodes = {n: side_by_side(jd_fns[n], hd_fns[n], warmup=2, repeat=4 * args.layer_repeat)
                   for n in decode_tokens}
        del jp_fn, jd_fns, hp_fns, hd_fns
        gc.collect()
        dec_limit = decode_bytes(cfg, args.kv, jdt.itemsize) / bw
        pre_limit = prefill_flops(cfg, args.prefill) / mm
        r = {
            "jax_prefill_s": jp["median_s"], "hf_prefill_s": hp["median_s"] if hp else None,
            "prefill_limit_s": pre_limit, "prefill_share_of_matmul_limit": pre_limit / jp["median_s"],
            "decode_limit_ms": dec_limit * 1e3, "decode": {},
        }
        if hp:
            r["prefill_speedup_vs_hf"] = hp["median_s"] / jp["median_s"]
        rows.append([dt, "prefill", f"{args.prefill} tok", r["jax_prefill_s"], r["hf_prefill_s"],
                     r.get("prefill_speedup_vs_hf"), r["prefill_limit_s"], r["prefill_share_of_matmul_limit"]])
        for n, (jd, hd) in decodes.items():
            d = {"jax_decode_ms": jd["median_s"] * 1e3, "hf_decode_ms": hd["median_s"] * 1e3 if hd else None,
                 "decode_share_of_bandwidth_limit": dec_limit / jd["median_s"]}
            if hd:
                d["decode_speedup_vs_hf"] = hd["median_s"] / jd["median_s"]
            r["decode"][f"{n}_tokens"] = d
            what = "same token" if n == 1 else f"{n} tokens cycled"
            rows.append([dt, "decode", f"kv {args.kv}, {what}", d["jax_decode_ms"] / 1e3,
                         (d["hf_decode_ms"] or 0) / 1e3, d.get("decode_speedup_vs_hf"), r["decode_limit_ms"] / 1e3,
                         d["decode_share_of_bandwidth_limit"]])
        results[dt] = r
    rows += depth_rows(args, bw, results)
    print_table(f"thinker-layer (memory read {bw / 1e9:.1f} GB/s measured)",
                ["dtype", "phase", "size", "omni_jax s", "HF s", "HF/omni_jax", "limit s", "share of limit"], rows)
    if args.json:
        emit_json(results)
    return results


if __name__ == "__main__":
    main()
