"""Vision encoder benchmark: this project's JAX ViT vs HF's ``Qwen3OmniMoeVisionEncoder``, same weights.

Real widths (hidden 1152, 16 heads, MLP 4304, out 2048, 48x48 position table) with the depth cut to a few
blocks (default 4, deepstack after blocks 1, 2, 3). Inputs: one 448x448 image (grid 1x28x28 = 784 patches)
and a 4-frame 448x448 video (grid 2x28x28 = 1568 patches, two temporal slices). fp32 and bf16.
Prints median seconds for both, the ratio HF/JAX, achieved FLOP/s and its share of the measured matmul peak.

    python -m omni_jax.bench vision [--json] [--depth 4] [--repeat 1] [--dtypes float32,bfloat16]

The first (untimed) call of each side is the compile / warm-up run and gives the max |diff| column.
Where the time goes on CPU and what was done about it: docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.bench.limits import matmul_flops
from omni_jax.bench.timing import emit_json, print_table, time_interleaved
from omni_jax.config import VisionConfig

INPUTS = {"image_448": ((1, 28, 28),), "video_4f_448": ((2, 28, 28),)}


def vision_flops(cfg: VisionConfig, grids) -> float:
    """Matmul FLOPs of one forward (patch embed, blocks incl. per-frame attention, all mergers)."""
    D, I = cfg.hidden_size, cfg.intermediate_size
    n = sum(t * h * w for t, h, w in grids)
    attn = sum(t * 4 * (h * w) ** 2 * D for t, h, w in grids)
    per_block = n * 2 * D * (3 * D + D + 2 * I) + attn
    wide = D * cfg.spatial_merge_size ** 2
    mergers = (1 + len(cfg.deepstack_visual_indexes)) * (n // 4) * 2 * wide * (wide + cfg.out_hidden_size)
    return n * 2 * 1536 * D + cfg.depth * per_block + mergers


def build_pair(cfg: VisionConfig, seed: int = 0):
    """(HF module fp32, our VisionEncoder fp32) holding the same random weights."""
    import torch
    from flax import nnx
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeVisionEncoderConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeVisionEncoder

    from omni_jax.models.common import pure_params
    from omni_jax.models.vision import VisionEncoder, hf_rules

    torch.manual_seed(seed)
    hcfg = Qwen3OmniMoeVisionEncoderConfig(
        depth=cfg.depth, hidden_size=cfg.hidden_size, num_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act, in_channels=cfg.in_channels, patch_size=cfg.patch_size,
        temporal_patch_size=cfg.temporal_patch_size, spatial_merge_size=cfg.spatial_merge_size,
        out_hidden_size=cfg.out_hidden_size, num_position_embeddings=cfg.num_position_embeddings,
        deepstack_visual_indexes=list(cfg.deepstack_visual_indexes))
    hcfg._attn_implementation = "sdpa"
    hf = Qwen3OmniMoeVisionEncoder(hcfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
            elif p.ndim == 1:
                p.normal_(1, 0.1)
            else:
                p.normal_(0, 0.02)
    ours = VisionEncoder(cfg, nnx.Rngs(seed))
    flat = {}
    for r in hf_rules(cfg):
        for name, idx in r.names():
            flat.setdefault(r.param, {})[idx] = r.to_param(hf.state_dict()[name].float().numpy())
    tree = pure_params(ours)
    for path, slots in flat.items():
        node = tree
        *parents, leaf = path.split(".")
        for k in parents:
            node = node[k]
        if () in slots:
            node[leaf] = jnp.asarray(slots[()])
        else:
            node[leaf] = jnp.asarray(np.stack([slots[(i,)] for i in range(len(slots))]))
    state = nnx.state(ours, nnx.Param)
    nnx.replace_by_pure_dict(state, tree)
    nnx.update(ours, state)
    return hf, ours


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m omni_jax.bench vision", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the reference's CPU setting)")
    args = ap.parse_args(argv)

    import torch

    from omni_jax.models.common import pure_params
    from omni_jax.models.vision import normalize_grids, vision_forward

    torch.set_num_threads(args.threads)
    base = VisionConfig()
    taps = tuple(range(max(args.depth - 3, 0), args.depth))[-len(base.deepstack_visual_indexes):]
    cfg = dataclasses.replace(base, depth=args.depth, deepstack_visual_indexes=taps)
    hf32, ours = build_pair(cfg)
    params32 = pure_params(ours)
    rows, results = [], []
    for dtype_name in args.dtypes.split(","):
        jdt = jnp.dtype(dtype_name)
        tdt = getattr(torch, dtype_name)
        hf = hf32.to(tdt)
        params = jax.tree.map(lambda a: a.astype(jdt), params32)
        peak = matmul_flops(dtype_name)
        for label, grids in INPUTS.items():
            grids = normalize_grids(grids)
            n = sum(t * h * w for t, h, w in grids)
            pix = np.random.default_rng(0).standard_normal((n, 1536)).astype(np.float32)
            xj = jnp.asarray(pix, jdt)
            xt = torch.from_numpy(pix).to(tdt)
            gt = torch.tensor(grids)
            jax_fn = lambda: vision_forward(params, xj, grids, cfg, dtype=jdt)  # noqa: E731

            def hf_fn():
                with torch.no_grad():
                    return hf(xt, grid_thw=gt).pooler_output

            ours_out = np.asarray(jax_fn()[0], np.float32)  # also the warm-up (compile) run
            ref_out = hf_fn().float().numpy()
            diff = float(np.abs(ours_out - ref_out).max())
            t = time_interleaved({"jax": jax_fn, "hf": hf_fn}, warmup=0, repeat=args.repeat)
            tj, th = t["jax"]["median_s"], t["hf"]["median_s"]
            flops = vision_flops(cfg, grids)
            rec = dict(input=label, dtype=dtype_name, patches=n, depth=cfg.depth, jax_s=tj, hf_s=th,
                       hf_over_jax=th / tj, jax_gflops=flops / tj / 1e9, hf_gflops=flops / th / 1e9,
                       jax_share_of_peak=flops / tj / peak, hf_share_of_peak=flops / th / peak,
                       peak_gflops=peak / 1e9, max_abs_diff=diff)
            results.append(rec)
            rows.append([label, dtype_name, n, tj, th, th / tj, rec["jax_gflops"], rec["hf_gflops"],
                         f"{100 * rec['jax_share_of_peak']:.0f}%", f"{100 * rec['hf_share_of_peak']:.0f}%", diff])
    out = {"benchmark": "vision", "config": dataclasses.asdict(cfg), "device": str(jax.devices()[0]),
           "torch_threads": args.threads, "results": results}
    if args.json:
        emit_json(out)
    else:
        print_table(f"vision encoder, real widths, depth {cfg.depth} (deepstack after {list(taps)}), "
                    f"{jax.devices()[0].platform}, torch threads {args.threads}",
                    ["input", "dtype", "patches", "jax_s", "hf_s", "hf/jax", "jax_GF/s", "hf_GF/s", "jax_%peak",
                     "hf_%peak", "max|diff|"], rows)
    return out


if __name__ == "__main__":
    main()
