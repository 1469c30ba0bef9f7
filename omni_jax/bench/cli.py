"""One CLI call in a fresh process, as a user runs it: ``python -m omni_jax.generate`` beside HF's eager pipeline.

    python -m omni_jax.bench cli [--json] [--repeat 3] [--new-tokens 16] [--frames 12]

The tiny test checkpoint (the demo config, which is the tests' tiny config: real vocabulary and special ids,
every component at tiny width; HF builds it, weights re-drawn, saved with the tokenizer files), an image +
text prompt, greedy Thinker and Talker, speech written to a wav. Every run is a fresh process timed from its
start to its exit (interpreter, imports, weights, compilation, generation, files):
- omni_jax cold: ``python -m omni_jax.generate ... --compilation-cache EMPTY_DIR`` (nothing compiled yet);
- omni_jax warm: the same with the compilation cache filled by an earlier identical call (the default
  behaviour from the second call on);
- HF: torch + transformers imported, ``Qwen3OmniMoeProcessor`` (image processor, feature extractor,
  tokenizer, chat template), ``from_pretrained`` in float32, ``generate(return_audio=True)``, the wav written.
Median of ``--repeat`` runs each, interleaved. The cold run's XLA programs (``--verbose``: name, compilations,
seconds) are printed too. Goals: warm <= 0.6x HF, cold <= 1.5x HF.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omni_jax.bench.timing import emit_json, print_table

PROMPT = "What do you see?"
GOALS = {"warm": 0.6, "cold": 1.5}

HF_WORKER = r"""
import json, sys, time, wave
t0 = time.perf_counter()
from pathlib import Path
ckpt, image, prompt, n_new, frames, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
import numpy as np
import PIL.Image
import torch
from transformers import AutoTokenizer, Qwen3OmniMoeForConditionalGeneration, Qwen3OmniMoeProcessor, WhisperFeatureExtractor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

class Processor(Qwen3OmniMoeProcessor):
    # no video processor (an image prompt does not use it; HF's needs torchvision to be constructed)
    def check_argument_for_proper_class(self, name, arg):
        return None if arg is None else super().check_argument_for_proper_class(name, arg)

pre = json.loads((Path(ckpt) / "preprocessor_config.json").read_text())
image_kw = {k: pre[k] for k in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std",
                                "min_pixels", "max_pixels")}
named = dict(image_token="<|image_pad|>", video_token="<|video_pad|>", audio_token="<|audio_pad|>",
             vision_bos_token="<|vision_start|>", vision_eos_token="<|vision_end|>",
             audio_bos_token="<|audio_start|>", audio_eos_token="<|audio_end|>")
proc = Processor(image_processor=Qwen2VLImageProcessorPil(**image_kw), video_processor=None,
                 feature_extractor=WhisperFeatureExtractor(**pre),
                 tokenizer=AutoTokenizer.from_pretrained(ckpt, extra_special_tokens=named),
                 chat_template=json.loads((Path(ckpt) / "chat_template.json").read_text())["chat_template"])
model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
conv = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]
text = proc.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
with PIL.Image.open(image) as im:
    inputs = proc(text=[text], images=[im.convert("RGB")], return_tensors="pt", padding=True)
with torch.no_grad():
    ids, wav = model.generate(**inputs, speaker="Ethan", thinker_do_sample=False, talker_do_sample=False,
                              thinker_max_new_tokens=n_new, talker_max_new_tokens=frames + 1, return_audio=True)
gen = ids[0, inputs["input_ids"].shape[1]:].tolist()
sys.stdout.write(proc.batch_decode([gen], skip_special_tokens=True)[0] + "\n")
samples = np.zeros(0, np.float32) if wav is None else wav.reshape(-1).float().numpy()
with wave.open(out, "wb") as f:
    f.setnchannels(1); f.setsampwidth(2); f.setframerate(24000)
    f.writeframes((np.clip(samples, -1, 1) * 32767).round().astype("<i2").tobytes())
print(json.dumps({"token_ids": gen, "samples": int(samples.size), "in_process_s": time.perf_counter() - t0}))
"""


def build_checkpoint(directory: Path) -> Path:
    """The tiny test checkpoint: HF model of the demo config, weights re-drawn, saved with the tokenizer files."""
    from omni_jax.bench.generate import build_checkpoint as build_hf_checkpoint, config_dict

    build_hf_checkpoint(directory, config_dict("tiny", 1))
    return directory


def timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    seconds = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return seconds, r


def ours_cmd(ckpt: Path, image: Path, args, cache: Path, wav: Path) -> list[str]:
    return [sys.executable, "-m", "omni_jax.generate", "--checkpoint", str(ckpt), "--image", str(image),
            "--prompt", PROMPT, "--greedy", "--max-new-tokens", str(args.new_tokens), "--max-speech-frames",
            str(args.frames), "--wav-out", str(wav), "--json", "--verbose", "--compilation-cache", str(cache)]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m omni_jax.bench cli", description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs of each kind (median)")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--frames", type=int, default=12, help="codec frames at most (80 ms each)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from omni_jax.demo import demo_media

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    tmp = Path(tempfile.mkdtemp(prefix="omni_jax_bench_cli_"))
    try:
        ckpt = build_checkpoint(tmp / "tiny")
        image, _ = demo_media(tmp)
        warm_cache = tmp / "cache_warm"
        _, fill = timed(ours_cmd(ckpt, image, args, warm_cache, tmp / "fill.wav"), env)  # fills the warm cache
        times: dict[str, list[float]] = {"hf": [], "cold": [], "warm": []}
        cold_out = warm_out = hf_out = None
        for i in range(args.repeat):
            s, r = timed([sys.executable, "-c", HF_WORKER, str(ckpt), str(image), PROMPT, str(args.new_tokens),
                          str(args.frames), str(tmp / "hf.wav")], env)
            times["hf"].append(s)
            hf_out = json.loads(r.stdout.strip().splitlines()[-1])
            cold_cache = tmp / f"cache_cold_{i}"
            s, cold_out = timed(ours_cmd(ckpt, image, args, cold_cache, tmp / "cold.wav"), env)
            times["cold"].append(s)
            shutil.rmtree(cold_cache, ignore_errors=True)
            s, warm_out = timed(ours_cmd(ckpt, image, args, warm_cache, tmp / "warm.wav"), env)
            times["warm"].append(s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cold_json = json.loads(cold_out.stdout.strip().splitlines()[-1])
    warm_json = json.loads(warm_out.stdout.strip().splitlines()[-1])
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: med[k] / med["hf"] for k in ("cold", "warm")}
    rows = [["HF eager pipeline", med["hf"], 1.0, "", ""],
            ["omni_jax cold (empty compilation cache)", med["cold"], ratio["cold"], GOALS["cold"],
             f"{cold_json['compiled_programs']} programs compiled, {cold_json['compile_s']:.2f} s"],
            ["omni_jax warm (compilation cache filled)", med["warm"], ratio["warm"], GOALS["warm"],
             f"{warm_json['compiled_programs']} programs compiled, {warm_json['compile_s']:.2f} s"]]
    print_table(f"one CLI call in a fresh process: image + text in, text + speech out, greedy, "
                f"{args.new_tokens} tokens, <= {args.frames} frames; median of {args.repeat} (seconds)",
                ["run", "seconds", "x HF", "goal x HF", "note"], rows)
    table = cold_out.stderr[cold_out.stderr.find("[XLA programs"):].strip()
    print(f"\nthe cold call's XLA programs:\n{table}")
    same = cold_json["token_ids"] == hf_out["token_ids"] and warm_json["token_ids"] == hf_out["token_ids"]
    print(f"same tokens as HF: {same}")
    out = {"benchmark": "cli", "new_tokens": args.new_tokens, "frames": args.frames, "repeat": args.repeat,
           "seconds": times, "median_s": med, "x_hf": ratio, "goals_x_hf": GOALS,
           "goals_met": {k: ratio[k] <= GOALS[k] for k in GOALS}, "same_tokens_as_hf": same,
           "cold": {k: cold_json[k] for k in ("load_s", "compile_s", "compiled_programs")},
           "warm": {k: warm_json[k] for k in ("load_s", "compile_s", "compiled_programs")},
           "fill_run_compiled_programs": json.loads(fill.stdout.strip().splitlines()[-1])["compiled_programs"]}
    if args.json:
        emit_json(out)
    return out


if __name__ == "__main__":
    main()
