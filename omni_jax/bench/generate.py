"""End-to-end generation, text and speech: omni_jax's engine beside HF ``generate(return_audio=True)``.

    python -m omni_jax.bench generate [--json] [--sizes tiny,real-reduced] [--new-tokens 16] [--frames 12]
        [--layers 1] [--audio-chunk 4]

Sizes: ``tiny`` (the demo config: hidden 64, 4 layers, real vocabulary) and ``real-reduced`` (the real
checkpoint's widths, vocabulary and expert counts with ``--layers`` decoder layers in the Thinker and the
Talker, 3 vision blocks, 2 audio layers, 1 code-predictor and 1 Code2Wav transformer layer). Same random
weights on both sides (HF builds the model, it is saved as a checkpoint, omni_jax loads that), fp32, greedy
Thinker and Talker, one text prompt, batch 1. Timed after one warm-up run (compilation is reported apart).
- omni_jax: ``omni_jax.load(dir).stream(...)`` with ``--audio-chunk`` frames per audio piece: time to the first
  text token, to the first audio piece, Thinker tokens/s, talker frames/s, total;
- omni_jax fused: ``generate(..., fused=True)``, the whole generation as one jitted XLA program (no streaming);
- HF: ``model.generate(..., return_audio=True)`` total (it has no streaming: its first audio is its total),
  ``model.thinker.generate`` for tokens/s and time to first token (max_new_tokens=1).
The machine's limit for decode is the weight bytes read per token / memory bandwidth (measured here).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from omni_jax.bench.timing import emit_json, print_table

PRESETS = Path(__file__).resolve().parents[1] / "presets"
PROMPT = "Tell me a short story about a mixture of experts that learned to share the work."


def config_dict(size: str, layers: int) -> dict:
    if size == "tiny":
        return json.loads((PRESETS / "demo.config.json").read_text())
    d = copy.deepcopy(json.loads((PRESETS / "qwen3_omni_30b_a3b_instruct.config.json").read_text()))
    th, tk = d["thinker_config"], d["talker_config"]
    th["text_config"]["num_hidden_layers"] = layers
    th["vision_config"].update(depth=3, deepstack_visual_indexes=[0, 1, 2])
    th["audio_config"]["encoder_layers"] = 2
    tk["text_config"]["num_hidden_layers"] = layers
    tk["accept_hidden_layer"] = layers
    tk["code_predictor_config"].update(num_hidden_layers=1, layer_types=["full_attention"])
    d["code2wav_config"]["num_hidden_layers"] = 1
    return d


def build_hf(config: dict, seed: int = 0):
    import torch
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeForConditionalGeneration

    from omni_jax.bench.speech import _redraw_

    torch.manual_seed(seed)
    cfg = Qwen3OmniMoeConfig(**{k: v for k, v in config.items() if k not in ("architectures", "transformers_version")})
    model = Qwen3OmniMoeForConditionalGeneration(cfg)
    _redraw_(model, seed)
    return model.float().eval()


def time_hf(model, input_ids, new_tokens: int, frames: int) -> dict:
    import torch

    ids = torch.tensor([input_ids], dtype=torch.long)
    mask = torch.ones_like(ids)
    kw = dict(speaker="Ethan", thinker_do_sample=False, talker_do_sample=False, return_audio=True,
              thinker_max_new_tokens=new_tokens, talker_max_new_tokens=frames + 1)
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, **kw)  # warm-up
        t0 = time.perf_counter()
        seq, wav = model.generate(input_ids=ids, attention_mask=mask, **kw)
        total = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.thinker.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False)
        thinker = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.thinker.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False)
        ttft = time.perf_counter() - t0
    n = out.shape[1] - ids.shape[1]
    samples = 0 if wav is None else int(np.asarray(wav).size)
    return dict(total_s=total, thinker_tokens=n, tokens_per_s=n / thinker, time_to_first_token_s=ttft,
                time_to_first_audio_s=total, audio_s=samples / 24_000)


def time_ours(directory: Path, new_tokens: int, frames: int, chunk: int) -> dict:
    import omni_jax
    from omni_jax.generation.talker_engine import TalkerSampling
    from omni_jax.processing.chat import build_messages

    model = omni_jax.load(directory)
    msgs = build_messages(PROMPT)
    kw = dict(max_new_tokens=new_tokens, talker_sampling=TalkerSampling.greedy(), max_speech_frames=frames,
              audio_chunk_frames=chunk)
    t0 = time.perf_counter()
    list(model.stream(msgs, **kw))  # warm-up: compiles every bucket this run uses
    compile_s = time.perf_counter() - t0
    res = [e for e in model.stream(msgs, **kw) if e["type"] == "result"][0]["result"]
    fkw = dict(kw, audio_chunk_frames=300)
    model.generate(msgs, fused=True, **fkw)  # warm-up (compiles the one program)
    t0 = time.perf_counter()
    fres = model.generate(msgs, fused=True, **fkw)
    fused_s = time.perf_counter() - t0
    t = res.extras
    n = len(res.token_ids)
    n_frames = 0 if res.codec_codes is None else len(res.codec_codes)
    talker_s = t["total_s"] - t["thinker_s"]
    return dict(total_s=t["total_s"], thinker_tokens=n, tokens_per_s=n / t["thinker_s"],
                time_to_first_token_s=t["time_to_first_token_s"], time_to_first_audio_s=t["time_to_first_audio_s"],
                frames=n_frames, frames_per_s=n_frames / talker_s if talker_s > 0 else None,
                audio_s=0 if res.wav is None else res.wav.size / 24_000, warmup_with_compile_s=compile_s,
                token_ids=res.token_ids, fused_total_s=fused_s, fused_same_tokens=fres.token_ids == res.token_ids)


def decode_limit_ms(directory: Path) -> float:
    """Thinker decode floor: bytes of the weights one token reads (attention + 8 experts per layer + lm_head,
    fp32) / measured memory bandwidth."""
    from omni_jax.bench.limits import memory_read_bandwidth
    from omni_jax.config import OmniConfig

    t = OmniConfig.from_file(directory).thinker.text
    attn = t.hidden_size * t.head_dim * (2 * t.num_heads + 2 * t.num_kv_heads)
    experts = t.top_k * 3 * t.hidden_size * t.moe_intermediate_size
    per_token = 4 * (t.num_layers * (attn + experts + t.hidden_size * t.num_experts) + t.hidden_size * t.vocab_size)
    return 1e3 * per_token / memory_read_bandwidth()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m omni_jax.bench generate", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,real-reduced")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--layers", type=int, default=1, help="decoder layers of the real-reduced Thinker and Talker")
    ap.add_argument("--audio-chunk", type=int, default=4, help="codec frames per streamed audio piece (ours)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    from omni_jax.processing.assets import copy_tokenizer_files
    from omni_jax.processing.chat import build_messages
    from omni_jax.processing.prompt import TextProcessor, prepare_text_batch

    rows, out = [], {"benchmark": "generate", "new_tokens": args.new_tokens, "frames": args.frames, "sizes": {}}
    for size in args.sizes.split(","):
        tmp = Path(tempfile.mkdtemp(prefix=f"omni_jax_bench_{size}_"))
        try:
            hf = build_hf(config_dict(size, args.layers))
            hf.save_pretrained(tmp, safe_serialization=True)
            copy_tokenizer_files(tmp)
            from omni_jax.config import OmniConfig

            proc = TextProcessor.from_dir(tmp, OmniConfig.from_file(tmp))
            prompt = prepare_text_batch(proc, [build_messages(PROMPT)])
            start = int(np.argmax(prompt.attention_mask[0] > 0))
            ids = prompt.input_ids[0, start:].tolist()
            theirs = time_hf(hf, ids, args.new_tokens, args.frames)
            del hf
            gc.collect()
            ours = time_ours(tmp, args.new_tokens, args.frames, args.audio_chunk)
            limit = decode_limit_ms(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        ours.pop("token_ids")
        out["sizes"][size] = {"omni_jax": ours, "hf": theirs, "decode_floor_ms_per_token": limit}
        for name, key in (("Thinker tokens/s", "tokens_per_s"), ("time to first token s", "time_to_first_token_s"),
                          ("time to first audio s", "time_to_first_audio_s"), ("total s", "total_s")):
            a, b = ours[key], theirs[key]
            share = f"{limit * a / 10:.0f}% of bw floor" if key == "tokens_per_s" else ""  # floor ms / ms per token
            rows.append([size, name, a, b, (a / b if key == "tokens_per_s" else b / a) if a and b else None, share])
        rows.append([size, "talker frames/s", ours["frames_per_s"], None, None, f"{ours['frames']} frames"])
        rows.append([size, "fused (one jitted program) total s", ours["fused_total_s"], theirs["total_s"],
                     theirs["total_s"] / ours["fused_total_s"], "no streaming"])
    print_table(f"end-to-end generate, fp32, greedy, {args.new_tokens} tokens + {args.frames} frames "
                "(speedup > 1: omni_jax faster)", ["size", "metric", "omni_jax", "HF", "speedup", "note"], rows)
    if args.json:
        emit_json(out)
    return out


if __name__ == "__main__":
    main()
