"""Real-width Thinker MoE layer (2048 → 128 × 768, top-8): each dispatch backend beside HF's experts.

    python -m omni_jax.bench moe [--json] [--dtype float32|bfloat16] [--tokens 512] [--with-dense]

Prefill (``--tokens`` tokens) and one decode token. Reported per row: median / min seconds, GFLOP/s of the
active expert work (T·k·3·2·H·I), the decode rows' effective bandwidth (bytes of the k selected experts'
weights / time), and their share of the machine limits measured in the same run (omni_jax.bench.limits).
HF: ``Qwen3OmniMoeThinkerTextSparseMoeBlock`` with the same weights, torch threads = 2, eager and grouped_mm.
Where the time goes on CPU and what was done about it: docs/performance.md.
"""

from __future__ import annotations

import argparse
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.bench.limits import matmul_flops, memory_read_bandwidth
from omni_jax.bench.timing import emit_json, print_table, time_fn
from omni_jax.moe import RoutingConfig, moe_block

H, E, I, K = 2048, 128, 768, 8


def _hf_block(params_np, dtype_name):
    import torch
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeTextConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerTextSparseMoeBlock

    cfg = Qwen3OmniMoeTextConfig(hidden_size=H, num_experts=E, moe_intermediate_size=I, num_experts_per_tok=K,
                                 norm_topk_prob=True)
    with torch.device("meta"):
        block = Qwen3OmniMoeThinkerTextSparseMoeBlock(cfg)
    tdt = getattr(torch, dtype_name)
    block.gate.weight = torch.nn.Parameter(torch.from_numpy(params_np["router"].T.copy()).to(tdt), requires_grad=False)
    block.experts.gate_up_proj = torch.nn.Parameter(
        torch.from_numpy(params_np["gate_up"]).to(tdt).transpose(1, 2).contiguous(), requires_grad=False)
    block.experts.down_proj = torch.nn.Parameter(
        torch.from_numpy(params_np["down"]).to(tdt).transpose(1, 2).contiguous(), requires_grad=False)
    return block.eval(), cfg


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m omni_jax.bench moe", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--with-dense", action="store_true", help="also time the dense all-experts oracle (slow)")
    ap.add_argument("--skip-ragged", action="store_true")
    ap.add_argument("--ragged-tokens", type=int, default=64,
                    help="prefill size for the ragged_dot-vs-tiles comparison (ragged_dot is ~dense on CPU)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--tile", type=int, default=None, help="tile rows for the tiles backend (default: auto)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    dt = jnp.dtype(args.dtype)
    rng = np.random.default_rng(0)
    params_np = dict(
        router=rng.standard_normal((H, E), np.float32) * 0.02,
        gate_up=(rng.standard_normal((E, H, 2 * I), np.float32) * 0.02),
        down=(rng.standard_normal((E, I, H), np.float32) * 0.02),
    )
    params = {k: jnp.asarray(v, dt) for k, v in params_np.items()}
    rc = RoutingConfig(E, K)
    x_pre = jnp.asarray(rng.standard_normal((args.tokens, H), np.float32), dt)
    x_dec = x_pre[:1]
    itemsize = dt.itemsize
    expert_bytes = (H * 2 * I + I * H) * itemsize
    decode_bytes = K * expert_bytes + H * E * itemsize

    def flops(T):
        return T * K * 3 * 2 * H * I

    bw = memory_read_bandwidth()
    mm = matmul_flops(args.dtype)
    rows, results = [], {"dtype": args.dtype, "tokens": args.tokens, "mem_bw_GBps": bw / 1e9,
                         "matmul_GFLOPs": mm / 1e9, "rows": []}

    def add(impl, phase, t):
        T = {"prefill": args.tokens, "decode": 1}.get(phase) or int(phase.removeprefix("prefill"))
        gflops = flops(T) / t["median_s"] / 1e9
        row = dict(impl=impl, phase=phase, median_s=t["median_s"], min_s=t["min_s"], gflops=gflops,
                   matmul_share=flops(T) / t["min_s"] / mm)
        if phase == "decode":
            row["GBps"] = decode_bytes / t["min_s"] / 1e9
            row["bw_share"] = decode_bytes / t["min_s"] / bw
        results["rows"].append(row)
        print(f"  {impl} {phase}: {row['median_s'] * 1e3:.1f} ms", file=sys.stderr, flush=True)
        rows.append([impl, phase, row["median_s"] * 1e3, row["min_s"] * 1e3, gflops,
                     f"{row['matmul_share']:.0%}", f"{row.get('GBps', float('nan')):.1f}",
                     f"{row['bw_share']:.0%}" if "bw_share" in row else "-"])

    backends = ["tiles", "gather"] + (["dense"] if args.with_dense else [])
    for backend in backends:
        f = jax.jit(functools.partial(moe_block, routing=rc, backend=backend, tile=args.tile))
        add(f"jax {backend}", "decode", time_fn(lambda: f(x_dec, params)[0], warmup=2, repeat=4 * args.repeat))
        if backend == "gather":
            continue  # T·K whole experts, one after another: a decode path
        add(f"jax {backend}", "prefill", time_fn(lambda: f(x_pre, params)[0], warmup=1,
                                                  repeat=1 if backend == "dense" else args.repeat))
    if not args.skip_ragged:  # ragged_dot vs tiles at a smaller prefill (CPU ragged_dot ≈ dense over all groups)
        xs = x_pre[: args.ragged_tokens]
        for backend in ("ragged", "tiles"):
            f = jax.jit(functools.partial(moe_block, routing=rc, backend=backend, tile=args.tile))
            add(f"jax {backend}", f"prefill{args.ragged_tokens}", time_fn(lambda: f(xs, params)[0], warmup=1, repeat=1))
    fa = jax.jit(functools.partial(moe_block, routing=rc))
    add("jax auto", "decode", time_fn(lambda: fa(x_dec, params)[0], warmup=2, repeat=4 * args.repeat))
    add("jax auto", "prefill", time_fn(lambda: fa(x_pre, params)[0], warmup=1, repeat=args.repeat))

    if not args.skip_hf:
        block, cfg = _hf_block(params_np, args.dtype)
        tdt = getattr(torch, args.dtype)
        xt_pre = torch.from_numpy(np.array(x_pre.astype(jnp.float32))).to(tdt)[None]
        xt_dec = xt_pre[:, :1]
        for impl in ("eager", "grouped_mm"):
            cfg._experts_implementation = impl
            block.experts.config = cfg
            with torch.no_grad():
                add(f"hf {impl}", "decode", time_fn(lambda: block(xt_dec), warmup=2, repeat=4 * args.repeat))
                add(f"hf {impl}", "prefill", time_fn(lambda: block(xt_pre), warmup=1, repeat=args.repeat))

    by = {(r["impl"], r["phase"]): r for r in results["rows"]}
    for phase in ("prefill", "decode"):
        hf = by.get(("hf eager", phase))
        ours = by.get(("jax auto", phase))
        if hf and ours:
            results[f"{phase}_speedup_vs_hf_eager"] = hf["median_s"] / ours["median_s"]
    small = f"prefill{args.ragged_tokens}"
    if ("jax ragged", small) in by:
        results["tiles_vs_ragged_prefill"] = by[("jax ragged", small)]["median_s"] / by[("jax tiles", small)]["median_s"]
    print_table(
        f"MoE layer {H}→{E}×{I} top-{K}, {args.dtype}, prefill {args.tokens} tok / decode 1 tok "
        f"(limits this run: mem {bw / 1e9:.1f} GB/s, matmul {mm / 1e9:.0f} GFLOP/s)",
        ["impl", "phase", "median ms", "min ms", "GFLOP/s", "% matmul", "GB/s", "% mem bw"], rows)
    for k in ("prefill_speedup_vs_hf_eager", "decode_speedup_vs_hf_eager", "tiles_vs_ragged_prefill"):
        if k in results:
            print(f"{k}: {results[k]:.2f}x")
    if args.json:
        emit_json(results)
    return results
