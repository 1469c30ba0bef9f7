"""Speech-out benchmark: this project's JAX code predictor and Code2Wav vs HF's, same weights, same run.

Real widths (``CodePredictorConfig()``: 5 layers, hidden 1024, 16/8 heads x 128, vocab 2048;
``Code2WavConfig()``: 8 layers, hidden 1024, decoder 1536, upsampling x1920); fp32 and bf16; batch 1.
- Code predictor: one frame (15 codes) per call. JAX: the jitted prefill + 14-step scan. HF:
  ``talker.code_predictor.generate(inputs_embeds=[past_hidden, c0_embed], max_new_tokens=15, do_sample=False)``,
  as the HF talker calls it. Share of limit: weight bytes read per frame (15 passes over the layers, one lm_head
  and one embedding row per step) / measured memory bandwidth, divided by the time.
- Code2Wav: ``--frames`` codec frames (default 25 = 2 s of 24 kHz audio) decoded in one shot; real-time factor
  = compute seconds / audio seconds (lower is better). Share of limit: XLA's FLOP count of the jitted decode /
  (time x measured matmul FLOP/s in that dtype).
Also prints the max abs difference between the two outputs (greedy codes: the number of differing codes).

    python -m omni_jax.bench speech [--json] [--frames 25] [--repeat 3] [--dtypes float32,bfloat16]
        [--cp-layers 5] [--c2w-layers 8] [--parts talker,code_predictor,code2wav]

Also the Talker decoder layer (``talker``): one decode step of one real-width layer (x20 = a frame's Talker
step), HF's figure the faster of its two MoE experts implementations. Every figure is the median of
``--repeat`` runs. Where the time goes and what was done about it: docs/performance.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.bench.limits import matmul_flops, memory_read_bandwidth
from omni_jax.bench.timing import emit_json, print_table, time_interleaved
from omni_jax.config import Code2WavConfig, CodePredictorConfig, TalkerConfig


def redraw_(module, seed: int) -> None:
    """Deterministic weights of sensible scale (transformers can leave some tensors uninitialised)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or name.endswith(".alpha") or name.endswith(".beta"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "embedding" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(fan_in))


def _jax_params(abstract_module, rules, hf_module) -> dict:
    from omni_jax.models.common import pure_params
    from omni_jax.weights.mapping import NameTable, fill_params, flatten, unflatten

    shapes = {k: tuple(v.shape) for k, v in flatten(pure_params(abstract_module)).items()}
    sd = {k: v.detach().float().numpy() for k, v in hf_module.state_dict().items()}
    flat = fill_params(NameTable(rules, shapes), sd.__getitem__, sd.keys(), np.float32, source="HF module")
    return jax.tree.map(jnp.asarray, unflatten(flat))


def _nbytes(tree) -> int:
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(tree))


# --------------------------------------------------------------------------------------------- code predictor

def build_code_predictor(cfg: CodePredictorConfig, seed: int = 0):
    import torch
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import (
        Qwen3OmniMoeTalkerCodePredictorConfig,
    )
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
        Qwen3OmniMoeTalkerCodePredictorModelForConditionalGeneration as HFCodePredictor,
    )

    from omni_jax.models.code_predictor import CodePredictor, hf_rules

    torch.manual_seed(seed)
    hcfg = Qwen3OmniMoeTalkerCodePredictorConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps, num_code_groups=cfg.num_code_groups,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        layer_types=["full_attention"] * cfg.num_layers,
    )
    hcfg._attn_implementation = "sdpa"
    hf = HFCodePredictor(hcfg).eval()
    redraw_(hf, seed)
    return hf, _jax_params(CodePredictor.abstract(cfg), hf_rules(cfg), hf)


def frame_bytes(cfg: CodePredictorConfig, itemsize: int) -> int:
    """Weight bytes one frame must read: the layers + final norm 15 times, one lm_head + one embedding row each."""
    h, i, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    layer = h * d * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * h * i + 2 * h + 2 * d
    steps = cfg.num_code_groups - 1
    return itemsize * (steps * (cfg.num_layers * layer + h) + steps * (h * cfg.vocab_size + h))


def bench_code_predictor(args, rows, results):
    import torch

    from omni_jax.models.code_predictor import predict_codes_jit, with_layer_views

    cfg = dataclasses.replace(CodePredictorConfig(), num_layers=args.cp_layers)
    hf32, params32 = build_code_predictor(cfg)
    rng = np.random.default_rng(0)
    past_hidden = rng.standard_normal((1, cfg.hidden_size)).astype(np.float32)
    c0_embed = rng.standard_normal((1, cfg.hidden_size)).astype(np.float32)
    bandwidth = memory_read_bandwidth()
    key = jax.random.key(0)
    for dtype_name in args.dtypes.split(","):
        jdt, tdt = jnp.dtype(dtype_name), getattr(torch, dtype_name)
        hf = copy.deepcopy(hf32).to(tdt)
        params = with_layer_views(jax.tree.map(lambda a: a.astype(jdt), params32))  # as the Talker engine runs
        ph, c0 = jnp.asarray(past_hidden, jdt), jnp.asarray(c0_embed, jdt)
        embeds = torch.from_numpy(np.stack([past_hidden, c0_embed], axis=1)).to(tdt)

        def jax_fn():
            return predict_codes_jit(params, ph, c0, key, cfg=cfg)

        def hf_fn():
            with torch.no_grad():
                return hf.generate(inputs_embeds=embeds, max_new_tokens=cfg.num_code_groups - 1, do_sample=False,
                                   output_logits=True, return_dict_in_generate=True)

        ours, ref = jax_fn(), hf_fn()
        code_diff = int((np.asarray(ours["codes"]) != ref.sequences.numpy()).sum())
        logit_diff = float(np.abs(np.asarray(ours["logits"][:, 0]) - ref.logits[0].float().numpy()).max())
        t = time_interleaved({"jax": jax_fn, "hf": hf_fn}, warmup=0, repeat=args.repeat)  # both ran once above
        tj, th = t["jax"]["median_s"], t["hf"]["median_s"]
        t_min = frame_bytes(cfg, jdt.itemsize) / bandwidth
        rec = dict(part="code_predictor", dtype=dtype_name, layers=cfg.num_layers, jax_s=tj, hf_s=th,
                   hf_over_jax=th / tj, jax_share_of_bandwidth=t_min / tj, hf_share_of_bandwidth=t_min / th,
                   frame_bytes=frame_bytes(cfg, jdt.itemsize), bandwidth_gbs=bandwidth / 1e9,
                   differing_codes=code_diff, step0_logit_max_abs_diff=logit_diff)
        results.append(rec)
        rows.append(["code predictor, 1 frame", dtype_name, f"{1e3 * tj:.1f} ms", f"{1e3 * th:.1f} ms", th / tj,
                     f"{100 * t_min / tj:.0f}% bw", f"{100 * t_min / th:.0f}% bw",
                     f"{code_diff}/15 codes, logits {logit_diff:.1e}"])
    del hf32


# ----------------------------------------------------------------------------------------------- talker

def bench_talker(args, rows, results):
    """One real-width Talker decoder layer (1024 wide, 16/2 heads, 128 experts x 384 top-6 + shared expert):
    one decode step against a KV cache of ``--talker-kv`` positions; the 20-layer step is 20x that."""
    from omni_jax.bench.thinker_layer import decode_bytes, hf_layer, jax_layer, layer_config, side_by_side

    cfg = layer_config(talker=True)
    bandwidth = memory_read_bandwidth()
    n_layers = TalkerConfig().text.num_layers
    for dtype_name in args.dtypes.split(","):
        jdt = jnp.dtype(dtype_name)
        _, ours = jax_layer(cfg, jdt, 16, args.talker_kv)  # {1: decode of the same token}
        _, theirs = hf_layer(cfg, dtype_name, 16, args.talker_kv, talker=True)
        jd_fn, hd_fns = ours[1], theirs[1]
        jd, hd = side_by_side(jd_fn, hd_fns, warmup=2, repeat=16)
        tj, th = jd["median_s"], hd["median_s"]
        t_min = decode_bytes(cfg, args.talker_kv, jdt.itemsize) / bandwidth
        results.append(dict(part="talker_decode_layer", dtype=dtype_name, kv=args.talker_kv, jax_s=tj, hf_s=th,
                            hf_over_jax=th / tj, jax_share_of_bandwidth=t_min / tj, hf_share_of_bandwidth=t_min / th,
                            talker_step_estimate_jax_s=tj * n_layers, talker_step_estimate_hf_s=th * n_layers))
        rows.append([f"talker decode, 1 layer (x{n_layers} = step)", dtype_name, f"{1e3 * tj:.1f} ms",
                     f"{1e3 * th:.1f} ms", th / tj, f"{100 * t_min / tj:.0f}% bw", f"{100 * t_min / th:.0f}% bw",
                     f"step ~{1e3 * tj * n_layers:.0f} ms"])


# --------------------------------------------------------------------------------------------- code2wav

def build_code2wav(cfg: Code2WavConfig, seed: int = 0):
    import torch
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeCode2WavConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeCode2Wav

    from omni_jax.models.code2wav import Code2Wav, hf_rules

    torch.manual_seed(seed)
    hcfg = Qwen3OmniMoeCode2WavConfig(
        codebook_size=cfg.codebook_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size, rms_norm_eps=cfg.rms_norm_eps,
        layer_scale_initial_scale=cfg.layer_scale_initial_scale, sliding_window=cfg.sliding_window,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        max_position_embeddings=cfg.max_position_embeddings, num_quantizers=cfg.num_quantizers,
        decoder_dim=cfg.decoder_dim, upsampling_ratios=list(cfg.upsampling_ratios),
        upsample_rates=list(cfg.upsample_rates),
    )
    hcfg._attn_implementation = "sdpa"
    hf = Qwen3OmniMoeCode2Wav(hcfg).eval()
    redraw_(hf, seed)
    return hf, _jax_params(Code2Wav.abstract(cfg), hf_rules(cfg), hf)


def bench_code2wav(args, rows, results):
    import torch

    from omni_jax.models.code2wav import decode_jit, wav_length, with_layer_views

    cfg = dataclasses.replace(Code2WavConfig(), num_layers=args.c2w_layers)
    hf32, params32 = build_code2wav(cfg)
    codes = np.random.default_rng(0).integers(0, cfg.codebook_size, (1, cfg.num_quantizers, args.frames))
    audio_s = wav_length(args.frames, cfg) / cfg.sample_rate
    for dtype_name in args.dtypes.split(","):
        jdt, tdt = jnp.dtype(dtype_name), getattr(torch, dtype_name)
        hf = copy.deepcopy(hf32).to(tdt)
        params = with_layer_views(jax.tree.map(lambda a: a.astype(jdt), params32))  # as the streamer runs
        cj, ct = jnp.asarray(codes, jnp.int32), torch.from_numpy(codes)
        compiled = decode_jit.lower(params, cj, cfg=cfg).compile()
        cost = compiled.cost_analysis()
        flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", float("nan")))
        peak = matmul_flops(dtype_name)

        def jax_fn():
            return compiled(params, cj)

        def hf_fn():
            with torch.no_grad():
                return hf(ct)

        diff = float(np.abs(np.asarray(jax_fn().astype(jnp.float32)) - hf_fn()[:, 0].float().numpy()).max())
        t = time_interleaved({"jax": jax_fn, "hf": hf_fn}, warmup=0, repeat=args.repeat)  # both ran once above
        tj, th = t["jax"]["median_s"], t["hf"]["median_s"]
        rec = dict(part="code2wav", dtype=dtype_name, layers=cfg.num_layers, frames=args.frames, audio_s=audio_s,
                   jax_s=tj, hf_s=th, hf_over_jax=th / tj, jax_rtf=tj / audio_s, hf_rtf=th / audio_s,
                   gflop=flops / 1e9, peak_gflops=peak / 1e9, jax_share_of_peak=flops / tj / peak,
                   hf_share_of_peak=flops / th / peak, max_abs_diff=diff)
        results.append(rec)
        rows.append([f"code2wav, {args.frames} frames ({audio_s:.2f} s)", dtype_name,
                     f"{tj:.3f} s (RTF {tj / audio_s:.3f})", f"{th:.3f} s (RTF {th / audio_s:.3f})", th / tj,
                     f"{100 * flops / tj / peak:.0f}% peak", f"{100 * flops / th / peak:.0f}% peak",
                     f"wav {diff:.1e}"])
    del hf32


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m omni_jax.bench speech", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--frames", type=int, default=25, help="codec frames for Code2Wav (12.5 per second)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per figure (the median is reported)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--cp-layers", type=int, default=CodePredictorConfig().num_layers)
    ap.add_argument("--c2w-layers", type=int, default=Code2WavConfig().num_layers)
    ap.add_argument("--parts", default="talker,code_predictor,code2wav")
    ap.add_argument("--talker-kv", type=int, default=256, help="talker KV-cache length for the decode step")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the reference's CPU setting)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rows, results = [], []
    parts = args.parts.split(",")
    if "talker" in parts:
        bench_talker(args, rows, results)
    if "code_predictor" in parts:
        bench_code_predictor(args, rows, results)
    if "code2wav" in parts:
        bench_code2wav(args, rows, results)
    out = {"benchmark": "speech", "device": str(jax.devices()[0]), "torch_threads": args.threads,
           "results": results}
    if args.json:
        emit_json(out)
    else:
        print_table(f"speech out, real widths, batch 1, {jax.devices()[0].platform}, torch threads {args.threads}",
                    ["what", "dtype", "jax", "hf", "hf/jax", "jax share", "hf share", "jax vs hf"], rows)
    return out


if __name__ == "__main__":
    main()
