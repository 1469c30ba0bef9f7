"""Audio encoder benchmark: this project's JAX AuT vs HF's ``Qwen3OmniMoeAudioEncoder``, same weights.

Real widths (d_model 1280, 20 heads, FFN 5120, conv stem 480 channels, output 2048) with the depth cut to a
few layers (default 4). Input: 30 s of audio (3000 log-mel frames -> 30 chunks, 390 tokens; JAX pads the
frames to its 3200-frame jit bucket), one clip, as ``get_audio_features`` feeds the tower. fp32 and bf16.
Prints median seconds for both, the ratio HF/JAX, achieved FLOP/s (useful FLOPs: the reference's 30
chunks) and its share of the measured matmul peak, and the max abs difference of the outputs.

    python -m omni_jax.bench audio [--json] [--layers 4] [--seconds 30] [--repeat 2] [--dtypes float32,bfloat16]
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
from omni_jax.config import AudioConfig


def audio_flops(cfg: AudioConfig, frames: int) -> float:
    """Matmul/conv FLOPs of one forward over ``frames`` mel frames (chunks of 100, windows of 104 tokens)."""
    from omni_jax.models.audio_encoder import (audio_token_counts, chunk_frames, conv_out_len,
                                               mel_rows_after_stem, tokens_per_chunk)

    cl, c, d = chunk_frames(cfg), cfg.downsample_hidden_size, cfg.d_model
    n_chunks = -(-frames // cl)
    f1, t1 = conv_out_len(cfg.num_mel_bins), conv_out_len(cl)
    f2, t2 = conv_out_len(f1), conv_out_len(t1)
    f3, t3 = conv_out_len(f2), conv_out_len(t2)
    stem = n_chunks * 2 * 9 * (f1 * t1 * c + f2 * t2 * c * c + f3 * t3 * c * c)
    conv_out = n_chunks * tokens_per_chunk(cfg) * 2 * c * mel_rows_after_stem(cfg.num_mel_bins) * d
    s = int(audio_token_counts([frames], cfg)[0])
    window = tokens_per_chunk(cfg) * (cfg.n_window_infer // cl)
    attn = 4 * s * min(s, window) * d
    layer = s * 2 * (4 * d * d + 2 * d * cfg.encoder_ffn_dim) + attn
    head = s * 2 * (d * d + d * cfg.output_dim)
    return stem + conv_out + cfg.encoder_layers * layer + head


def build_pair(cfg: AudioConfig, seed: int = 0):
    """(HF module fp32, our parameter tree fp32) holding the same random weights."""
    import torch
    from flax import nnx
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

    from omni_jax.models.audio_encoder import AudioEncoder, hf_rules
    from omni_jax.weights.mapping import NameTable, fill_params, unflatten

    torch.manual_seed(seed)
    hcfg = Qwen3OmniMoeAudioEncoderConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    hcfg._attn_implementation = "sdpa"
    hf = Qwen3OmniMoeAudioEncoder(hcfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
            elif p.ndim == 1:
                p.normal_(1, 0.1)
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.normal_(0, 1.0 / np.sqrt(fan_in))
    abstract = nnx.eval_shape(lambda: AudioEncoder(cfg, rngs=nnx.Rngs(seed)))
    shapes = {".".join(map(str, k)): tuple(v.get_value().shape)
              for k, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    sd = {k: v.float().numpy() for k, v in hf.state_dict().items()}
    flat = fill_params(NameTable(hf_rules(cfg), shapes), sd.__getitem__, sd.keys(), np.float32, source="HF module")
    return hf, jax.tree.map(jnp.asarray, unflatten(flat))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m omni_jax.bench audio", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the reference's CPU setting)")
    args = ap.parse_args(argv)

    import torch

    from omni_jax.models.audio_encoder import audio_token_counts, bucket_frames, encode, pack_audio_embeddings

    torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(AudioConfig(), encoder_layers=args.layers)
    hf32, params32 = build_pair(cfg)
    frames = int(round(args.seconds * 100))
    rng = np.random.default_rng(0)
    feats = (rng.standard_normal((1, cfg.num_mel_bins, frames)) * 0.5).astype(np.float32)
    bucket = bucket_frames(frames, cfg)
    feats_bucketed = np.pad(feats, ((0, 0), (0, 0), (0, bucket - frames)))
    counts = audio_token_counts([frames], cfg)
    flops = audio_flops(cfg, frames)
    rows, results = [], []
    for dtype_name in args.dtypes.split(","):
        jdt, tdt = jnp.dtype(dtype_name), getattr(torch, dtype_name)
        hf = hf32.to(tdt)
        params = jax.tree.map(lambda a: a.astype(jdt), params32)
        xj = jnp.asarray(feats_bucketed)
        nj = jnp.asarray([frames], jnp.int32)
        xt = torch.from_numpy(feats[0]).to(tdt)  # (mel, frames): get_audio_features' packed layout
        lt = torch.tensor([frames])
        peak = matmul_flops(dtype_name)

        def jax_fn():
            return encode(params, xj, nj, cfg=cfg)

        def hf_fn():
            with torch.no_grad():
                return hf(xt, feature_lens=lt).last_hidden_state

        ours = np.asarray(pack_audio_embeddings(jax_fn(), counts).astype(jnp.float32))
        ref = hf_fn().float().numpy()
        diff = float(np.abs(ours - ref).max())
        t = time_interleaved({"jax": jax_fn, "hf": hf_fn}, warmup=0, repeat=args.repeat)  # warmed by the diff run
        tj, th = t["jax"]["median_s"], t["hf"]["median_s"]
        rec = dict(dtype=dtype_name, seconds=args.seconds, frames=frames, tokens=int(counts[0]),
                   layers=cfg.encoder_layers, jax_s=tj, hf_s=th, hf_over_jax=th / tj,
                   jax_gflops=flops / tj / 1e9, hf_gflops=flops / th / 1e9, jax_share_of_peak=flops / tj / peak,
                   hf_share_of_peak=flops / th / peak, peak_gflops=peak / 1e9, max_abs_diff=diff,
                   max_abs_output=float(np.abs(ref).max()))
        results.append(rec)
        rows.append([dtype_name, frames, int(counts[0]), tj, th, th / tj, rec["jax_gflops"], rec["hf_gflops"],
                     f"{100 * rec['jax_share_of_peak']:.0f}%", f"{100 * rec['hf_share_of_peak']:.0f}%", diff])
    out = {"benchmark": "audio", "config": dataclasses.asdict(cfg), "device": str(jax.devices()[0]),
           "torch_threads": args.threads, "gflop_per_forward": flops / 1e9, "results": results}
    if args.json:
        emit_json(out)
    else:
        print_table(f"audio encoder, real widths, {cfg.encoder_layers} layers, {args.seconds:g} s of audio "
                    f"({flops / 1e9:.0f} GFLOP), {jax.devices()[0].platform}, torch threads {args.threads}",
                    ["dtype", "frames", "tokens", "jax_s", "hf_s", "hf/jax", "jax_GF/s", "hf_GF/s", "jax_%peak",
                     "hf_%peak", "max|diff|"], rows)
    return out


if __name__ == "__main__":
    main()
