"""End-to-end generation, text and speech: omni_jax's engine beside HF ``generate(return_audio=True)``.

    python -m omni_jax.bench generate [--json] [--sizes tiny,real-reduced] [--new-tokens 16] [--frames 12]
        [--layers 2] [--audio-chunk 4] [--repeat 3] [--hidden-scale 1]

Sizes: ``tiny`` (the demo config: hidden 64, 4 layers, real vocabulary) and ``real-reduced`` (the real
checkpoint's widths, vocabulary and expert counts with ``--layers`` decoder layers in the Thinker and the
Talker (the Talker reads the last Thinker layer), 3 vision blocks, 2 audio layers, the real 5-layer code
predictor and 8-layer Code2Wav). ``--hidden-scale N`` divides every width (hidden sizes, intermediate sizes,
head counts; head_dim, vocabularies and expert counts stay) by N, so the run fits a small machine; the real
widths (N = 1, 2 + 2 layers) need about 20 GB. Same random weights on both sides: HF builds the model and saves
it as a checkpoint, then each side loads that checkpoint in its own process (so the peak host memory of each
side is its own), fp32, greedy Thinker and Talker, one text prompt, batch 1. Each figure is the median of
``--repeat`` runs after one warm-up run (compilation is reported apart).
- omni_jax streaming: ``omni_jax.load(dir).stream(...)`` with ``--audio-chunk`` frames per audio piece: time to
  the first text token, to the first audio piece, Thinker tokens/s, talker frames/s, total;
- omni_jax fused: ``generate(..., fused=True)``, the whole generation as one jitted XLA program (no streaming);
- HF: ``model.generate(..., return_audio=True)`` total (it has no streaming: its first audio is its total),
  ``model.thinker.generate`` for tokens/s and time to first token (max_new_tokens=1).
The Thinker's decode floor is the weight bytes one token reads / the memory read bandwidth measured in this run.
Where the time goes and what was done about it: docs/performance.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from omni_jax.bench.timing import emit_json, print_table

PRESETS = Path(__file__).resolve().parents[1] / "presets"
PROMPT = "Tell me a short story about a mixture of experts that learned to share the work."
HF_THREADS = 2


# --------------------------------------------------------------------------------------------- configs

def _div(n: int, s: int) -> int:
    return max(1, n // s)


def scale_widths(d: dict, s: int) -> dict:
    """Every width of a full Omni config dict divided by ``s`` (head_dim, vocabularies, experts, depths kept)."""
    if s == 1:
        return d
    th, tk, c2w = d["thinker_config"], d["talker_config"], d["code2wav_config"]
    for cfg in (th["text_config"], tk["text_config"], tk["code_predictor_config"], c2w):
        for key in ("hidden_size", "intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size",
                    "num_attention_heads", "num_key_value_heads", "decoder_dim"):
            if cfg.get(key):
                cfg[key] = _div(cfg[key], s)
    heads = th["text_config"]["num_attention_heads"]
    th["text_config"]["num_key_value_heads"] = min(th["text_config"]["num_key_value_heads"], heads)
    hidden = th["text_config"]["hidden_size"]
    v, a = th["vision_config"], th["audio_config"]
    v.update(hidden_size=_div(v["hidden_size"], s), intermediate_size=_div(v["intermediate_size"], s),
             num_heads=_div(v["num_heads"], s), out_hidden_size=hidden)
    a.update(d_model=_div(a["d_model"], s), encoder_attention_heads=_div(a["encoder_attention_heads"], s),
             encoder_ffn_dim=_div(a["encoder_ffn_dim"], s), downsample_hidden_size=_div(a["downsample_hidden_size"], s),
             output_dim=hidden)
    tk["thinker_hidden_size"] = hidden
    return d


def config_dict(size: str, layers: int, hidden_scale: int = 1) -> dict:
    if size == "tiny":
        return json.loads((PRESETS / "demo.config.json").read_text())
    d = copy.deepcopy(json.loads((PRESETS / "qwen3_omni_30b_a3b_instruct.config.json").read_text()))
    th, tk = d["thinker_config"], d["talker_config"]
    th["text_config"]["num_hidden_layers"] = layers
    th["vision_config"].update(depth=3, deepstack_visual_indexes=[0, 1, 2])
    th["audio_config"]["encoder_layers"] = 2
    tk["text_config"]["num_hidden_layers"] = layers
    tk["accept_hidden_layer"] = layers
    return scale_widths(d, hidden_scale)


# --------------------------------------------------------------------------------------------- workers

def peak_rss_gb() -> float:
    """This process's peak resident memory since it started (Linux ``VmHWM``; ``ru_maxrss`` would also count
    the parent's memory at fork time)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _median(xs) -> float:
    return float(statistics.median(xs))


def build_checkpoint(directory: Path, config: dict, seed: int = 0) -> None:
    """HF builds the random model (weights redrawn at sensible scales) and saves it with the tokenizer files."""
    import torch
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeForConditionalGeneration

    from omni_jax.bench.speech import redraw_
    from omni_jax.processing.assets import copy_tokenizer_files

    torch.manual_seed(seed)
    cfg = Qwen3OmniMoeConfig(**{k: v for k, v in config.items() if k not in ("architectures", "transformers_version")})
    model = Qwen3OmniMoeForConditionalGeneration(cfg)
    redraw_(model, seed)
    model.float().eval().save_pretrained(directory, safe_serialization=True)
    copy_tokenizer_files(directory)


def prompt_ids(directory: Path) -> list[int]:
    from omni_jax.config import OmniConfig
    from omni_jax.processing.chat import build_messages
    from omni_jax.processing.prompt import TextProcessor, prepare_text_batch

    proc = TextProcessor.from_dir(directory, OmniConfig.from_file(directory))
    prompt = prepare_text_batch(proc, [build_messages(PROMPT)])
    start = int(np.argmax(prompt.attention_mask[0] > 0))
    return prompt.input_ids[0, start:].tolist()


def time_hf(directory: Path, new_tokens: int, frames: int, repeat: int) -> dict:
    import torch
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeForConditionalGeneration

    torch.set_num_threads(HF_THREADS)
    t0 = time.perf_counter()
    model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    ids = torch.tensor([prompt_ids(directory)], dtype=torch.long)
    mask = torch.ones_like(ids)
    kw = dict(speaker="Ethan", thinker_do_sample=False, talker_do_sample=False, return_audio=True,
              thinker_max_new_tokens=new_tokens, talker_max_new_tokens=frames + 1)
    totals, thinker, ttft = [], [], []
    with torch.no_grad():
        seq, wav = model.generate(input_ids=ids, attention_mask=mask, **kw)  # warm-up
        for _ in range(repeat):
            t0 = time.perf_counter()
            seq, wav = model.generate(input_ids=ids, attention_mask=mask, **kw)
            totals.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = model.thinker.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                         do_sample=False)
            thinker.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            model.thinker.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False)
            ttft.append(time.perf_counter() - t0)
    n = out.shape[1] - ids.shape[1]
    wav = np.zeros(0, np.float32) if wav is None else np.asarray(wav, np.float32).reshape(-1)
    return dict(total_s=_median(totals), thinker_tokens=n, tokens_per_s=n / _median(thinker),
                time_to_first_token_s=_median(ttft), time_to_first_audio_s=_median(totals),
                audio_s=wav.size / 24_000, load_s=load_s, token_ids=seq[0, ids.shape[1]:].tolist(),
                wav=wav.tolist(), peak_rss_gb=peak_rss_gb())


def time_ours(directory: Path, new_tokens: int, frames: int, chunk: int, repeat: int, fused: bool) -> dict:
    import omni_jax
    from omni_jax.generation.talker_engine import TalkerSampling
    from omni_jax.processing.chat import build_messages

    t0 = time.perf_counter()
    model = omni_jax.load(directory)
    load_s = time.perf_counter() - t0
    msgs = build_messages(PROMPT)
    kw = dict(max_new_tokens=new_tokens, talker_sampling=TalkerSampling.greedy(), max_speech_frames=frames)
    if fused:
        t0 = time.perf_counter()
        res = model.generate(msgs, fused=True, audio_chunk_frames=300, **kw)  # warm-up: compiles the one program
        warm = time.perf_counter() - t0
        totals = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            res = model.generate(msgs, fused=True, audio_chunk_frames=300, **kw)
            totals.append(time.perf_counter() - t0)
        wav = np.zeros(0, np.float32) if res.wav is None else np.asarray(res.wav, np.float32).reshape(-1)
        return dict(total_s=_median(totals), warmup_with_compile_s=warm, load_s=load_s,
                    token_ids=list(res.token_ids), wav=wav.tolist(), peak_rss_gb=peak_rss_gb())
    t0 = time.perf_counter()
    list(model.stream(msgs, audio_chunk_frames=chunk, **kw))  # warm-up: compiles every bucket this run uses
    warm = time.perf_counter() - t0
    runs = []
    for _ in range(repeat):
        res = [e for e in model.stream(msgs, audio_chunk_frames=chunk, **kw) if e["type"] == "result"][0]["result"]
        runs.append(res)
    t = {k: _median([r.extras[k] for r in runs])
         for k in ("total_s", "thinker_s", "time_to_first_token_s", "time_to_first_audio_s")}
    n = len(res.token_ids)
    n_frames = 0 if res.codec_codes is None else len(res.codec_codes)
    talker_s = t["total_s"] - t["thinker_s"]
    wav = np.zeros(0, np.float32) if res.wav is None else np.asarray(res.wav, np.float32).reshape(-1)
    return dict(t, thinker_tokens=n, tokens_per_s=n / t["thinker_s"], frames=n_frames,
                frames_per_s=n_frames / talker_s if talker_s > 0 else None, audio_s=wav.size / 24_000,
                warmup_with_compile_s=warm, load_s=load_s, token_ids=list(res.token_ids), wav=wav.tolist(),
                peak_rss_gb=peak_rss_gb())


def run_worker(*args: str) -> dict:
    """Run one side in a fresh process (its own peak memory); its last stdout line is its JSON result."""
    cmd = [sys.executable, "-m", "omni_jax.bench.generate", "--worker", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {args[0]} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m omni_jax.bench.generate --worker")
    ap.add_argument("side", choices=["build", "hf", "ours", "ours-fused"])
    ap.add_argument("directory", type=Path)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden-scale", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--audio-chunk", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    if a.side == "build":
        build_checkpoint(a.directory, config_dict(a.size, a.layers, a.hidden_scale))
        out = {"peak_rss_gb": peak_rss_gb()}
    elif a.side == "hf":
        out = time_hf(a.directory, a.new_tokens, a.frames, a.repeat)
    else:
        out = time_ours(a.directory, a.new_tokens, a.frames, a.audio_chunk, a.repeat, fused=a.side == "ours-fused")
    print(json.dumps(out))


# --------------------------------------------------------------------------------------------- report

def decode_limit_ms(directory: Path, bandwidth: float) -> float:
    """Thinker decode floor: bytes of the weights one token reads (attention + 8 experts + router per layer,
    lm_head; fp32) / memory read bandwidth."""
    from omni_jax.config import OmniConfig

    t = OmniConfig.from_file(directory).thinker.text
    attn = t.hidden_size * t.head_dim * (2 * t.num_heads + 2 * t.num_kv_heads)
    experts = t.top_k * 3 * t.hidden_size * t.moe_intermediate_size
    per_token = 4 * (t.num_layers * (attn + experts + t.hidden_size * t.num_experts) + t.hidden_size * t.vocab_size)
    return 1e3 * per_token / bandwidth


def _wav_diff(a: list, b: list) -> float | None:
    """max |a - b| of two waveforms (None when their lengths differ). The streamed pieces are
    ``chunked_decode(codes, --audio-chunk, 25)``, not HF's 300-frame chunks, so only the fused wav is compared."""
    return float(np.abs(np.asarray(a) - np.asarray(b)).max()) if len(a) == len(b) and len(a) else None


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker_main(argv[1:])
        return {}
    ap = argparse.ArgumentParser(prog="python -m omni_jax.bench generate", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,real-reduced")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--layers", type=int, default=2, help="decoder layers of the real-reduced Thinker and Talker")
    ap.add_argument("--hidden-scale", type=int, default=1,
                    help="divide every width of real-reduced by this (1 = real widths, ~20 GB at 2 + 2 layers)")
    ap.add_argument("--audio-chunk", type=int, default=4, help="codec frames per streamed audio piece (ours)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per figure (the median is reported)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from omni_jax.bench.limits import memory_read_bandwidth

    bandwidth = memory_read_bandwidth()
    common = ["--new-tokens", str(args.new_tokens), "--frames", str(args.frames), "--repeat", str(args.repeat)]
    rows, out = [], {"benchmark": "generate", "new_tokens": args.new_tokens, "frames": args.frames,
                     "repeat": args.repeat, "memory_read_GBps": bandwidth / 1e9, "sizes": {}}
    for size in args.sizes.split(","):
        tmp = Path(tempfile.mkdtemp(prefix=f"omni_jax_bench_{size}_"))
        try:
            run_worker("build", str(tmp), "--size", size, "--layers", str(args.layers),
                       "--hidden-scale", str(args.hidden_scale))
            theirs = run_worker("hf", str(tmp), *common)
            ours = run_worker("ours", str(tmp), *common, "--audio-chunk", str(args.audio_chunk))
            fused = run_worker("ours-fused", str(tmp), *common)
            limit = decode_limit_ms(tmp, bandwidth)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        checks = dict(same_tokens_streaming=ours["token_ids"] == theirs["token_ids"],
                      same_tokens_fused=fused["token_ids"] == theirs["token_ids"],
                      wav_max_abs_diff_fused_vs_hf=_wav_diff(fused["wav"], theirs["wav"]))
        for side in (ours, fused, theirs):
            side.pop("token_ids")
            side.pop("wav")
        label = size if size == "tiny" or args.hidden_scale == 1 else f"{size} (widths / {args.hidden_scale})"
        out["sizes"][label] = {"omni_jax": ours, "omni_jax_fused": fused, "hf": theirs, "checks": checks,
                               "decode_floor_ms_per_token": limit, "layers": args.layers}
        ms_per_token = 1e3 / ours["tokens_per_s"]
        rows += [
            [label, "Thinker tokens/s", ours["tokens_per_s"], theirs["tokens_per_s"],
             ours["tokens_per_s"] / theirs["tokens_per_s"], f"{100 * limit / ms_per_token:.0f}% of bw floor"],
            [label, "time to first token s", ours["time_to_first_token_s"], theirs["time_to_first_token_s"],
             theirs["time_to_first_token_s"] / ours["time_to_first_token_s"], ""],
            [label, "time to first audio s", ours["time_to_first_audio_s"], theirs["total_s"],
             theirs["total_s"] / ours["time_to_first_audio_s"],
             f"{ours['time_to_first_audio_s'] / theirs['total_s']:.2f} x HF total (HF: its total)"],
            [label, "streaming total s", ours["total_s"], theirs["total_s"], theirs["total_s"] / ours["total_s"],
             f"{ours['frames']} frames, {ours['frames_per_s']:.1f} frames/s" if ours["frames_per_s"] else ""],
            [label, "fused (one jitted program) total s", fused["total_s"], theirs["total_s"],
             theirs["total_s"] / fused["total_s"], f"streaming / fused {ours['total_s'] / fused['total_s']:.2f}"],
            [label, "peak host memory GB (streaming)", ours["peak_rss_gb"], theirs["peak_rss_gb"],
             theirs["peak_rss_gb"] / ours["peak_rss_gb"], "each side in its own process"],
            [label, "peak host memory GB (fused)", fused["peak_rss_gb"], theirs["peak_rss_gb"],
             theirs["peak_rss_gb"] / fused["peak_rss_gb"], ""],
            [label, "same tokens as HF (streaming, fused)", str(checks["same_tokens_streaming"]),
             str(checks["same_tokens_fused"]), None,
             f"fused wav vs HF's max |diff| {checks['wav_max_abs_diff_fused_vs_hf']}"],
        ]
    print_table(f"end-to-end generate, fp32, greedy, {args.new_tokens} tokens + {args.frames} frames, median of "
                f"{args.repeat} (speedup > 1: omni_jax faster; memory read {bandwidth / 1e9:.1f} GB/s)",
                ["size", "metric", "omni_jax", "HF", "speedup", "note"], rows)
    if args.json:
        emit_json(out)
    return out


if __name__ == "__main__":
    main()
