"""``python -m omni_jax.generate``: multimodal prompt in, text (and speech) out.

    python -m omni_jax.generate --checkpoint DIR --prompt "Hello" [--system TEXT] [--max-new-tokens N]
        [--image PATH]... [--audio PATH]... [--video PATH]... [--use-audio-in-video]
        [--greedy | --temperature T --top-p P --top-k K --seed S] [--dtype float32|bfloat16] [--json]
        [--speaker NAME] [--wav-out FILE] [--no-speech]

DIR is a Hugging Face Qwen3-Omni checkpoint directory or one written by convert/hf_to_orbax.py. The prompt
is the user turn rendered with the checkpoint's chat template (with the generation prompt); its content is
the images, then the audios, then the videos, then the prompt text. Text streams
to stdout as it is produced; with ``--json`` the last stdout line is one JSON object. Speech is on when
the checkpoint has a talker (``--no-speech`` turns it off): the Talker speaks the generated text with
``--speaker`` and the 24 kHz waveform is written to ``--wav-out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m omni_jax.generate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, help="HF or converted checkpoint directory")
    p.add_argument("--demo", action="store_true",
                   help="use a small RANDOM-weight checkpoint built locally on first use (no download)")
    p.add_argument("--prompt", default=None, help="user text")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--image", type=Path, action="append", default=[], help="image file (repeatable)")
    p.add_argument("--audio", type=Path, action="append", default=[], help="audio file (repeatable)")
    p.add_argument("--video", type=Path, action="append", default=[], help="video file or folder of frames (repeatable)")
    p.add_argument("--use-audio-in-video", action="store_true", help="also use the audio track of each --video")
    p.add_argument("--image-max-pixels", type=int, default=None, help="resize images above this many pixels")
    p.add_argument("--video-fps", type=float, default=None, help="sample video frames at this rate")
    p.add_argument("--video-max-frames", type=int, default=None, help="at most this many frames per video")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--greedy", action="store_true", help="greedy decoding")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="float32 (the CPU default: XLA:CPU widens every bf16 weight stack to f32 as a whole on each "
                        "step, ~4-5x slower at 2 layers x 16 experts and worse with size; see README) or bfloat16 "
                        "(GPU/TPU)")
    p.add_argument("--mesh", default=None,
                   help="device mesh, e.g. data=1,expert=8: experts split over the expert axis (expert parallel)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    p.add_argument("--speaker", default="Ethan", help="talker voice (case-insensitive; e.g. Ethan, Chelsie, Aiden)")
    p.add_argument("--wav-out", type=Path, default=None, help="where to write the speech (default output.wav)")
    p.add_argument("--no-speech", action="store_true", help="text only, even if the checkpoint has a talker")
    p.add_argument("--max-speech-frames", type=int, default=None,
                   help="codec frames (80 ms each) at most (default 4095; 40 with --demo)")
    p.add_argument("--audio-chunk-frames", type=int, default=None,
                   help="stream speech in pieces of this many codec frames, each appended to --wav-out as soon as "
                        "it is decoded (default 300 = HF's chunked_decode, whose waveform it equals; 10 with --demo)")
    p.add_argument("--router-stats", type=Path, default=None,
                   help="write per-layer expert counts for prompt and generated tokens to this JSON file")
    return p


def thinker_sampling(args, checkpoint: Path):
    """--greedy, else the flags, else the checkpoint's generation_config.json, else greedy (HF's default)."""
    from omni_jax.generation.sampling import SamplingConfig

    if args.greedy:
        return SamplingConfig.greedy()
    gen = {}
    gpath = checkpoint / "generation_config.json"
    if gpath.is_file():
        try:
            gen = json.loads(gpath.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{gpath}: not valid JSON") from None
    explicit = any(v is not None for v in (args.temperature, args.top_p, args.top_k))
    do_sample = explicit or bool(gen.get("do_sample", "temperature" in gen or "top_p" in gen))
    if not do_sample:
        return SamplingConfig.greedy(gen.get("repetition_penalty", 1.0))
    return SamplingConfig(
        do_sample=True,
        temperature=args.temperature if args.temperature is not None else gen.get("temperature", 1.0),
        top_p=args.top_p if args.top_p is not None else gen.get("top_p"),
        top_k=args.top_k if args.top_k is not None else gen.get("top_k"),
        repetition_penalty=gen.get("repetition_penalty", 1.0),
    )


def router_stats_json(records, prompt_len: int, n_layers: int) -> dict:
    """Per-layer expert counts, prompt (prefill) and generated tokens separately."""
    import numpy as np

    prompt = np.asarray(records[0].stats.counts)
    gen = sum((np.asarray(r.stats.counts) for r in records[1:]), np.zeros_like(prompt))
    return {"num_layers": n_layers, "prompt_tokens": prompt_len, "generated_tokens": len(records) - 1,
            "prompt_counts": prompt.tolist(), "generated_counts": gen.tolist()}


def run(args) -> dict:
    import numpy as np

    from omni_jax.config import OmniConfig
    from omni_jax.generation.thinker_engine import ThinkerEngine
    from omni_jax.models.common import pure_params
    from omni_jax.processing.chat import build_messages
    from omni_jax.processing.prompt import TextProcessor, prepare_text_batch
    from omni_jax.weights import load_checkpoint

    ckpt = args.checkpoint
    if args.demo and ckpt is None:
        from omni_jax.demo import RANDOM_WEIGHTS_NOTICE, ensure_demo_checkpoint

        ckpt = ensure_demo_checkpoint(log=lambda m: print(m, file=sys.stderr))
        print(RANDOM_WEIGHTS_NOTICE, file=sys.stderr)
        if args.prompt is None:
            from omni_jax.demo import demo_media

            image, audio = demo_media(ckpt)
            args.prompt = "What do you see and hear?"
            args.image = args.image or [image]
            args.audio = args.audio or [audio]
        if args.max_speech_frames is None:
            args.max_speech_frames = 40
        if args.audio_chunk_frames is None:
            args.audio_chunk_frames = 10
    if ckpt is None:
        raise ValueError("--checkpoint is required (or --demo)")
    if not ckpt.is_dir():
        raise ValueError(f"{ckpt}: checkpoint directory not found")
    if args.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be >= 1")
    if args.audio_chunk_frames is not None and args.audio_chunk_frames < 1:
        raise ValueError("--audio-chunk-frames must be >= 1")
    cfg = OmniConfig.from_file(ckpt)
    processor = TextProcessor.from_dir(ckpt, cfg)
    sampling = thinker_sampling(args, ckpt)
    if args.use_audio_in_video and not args.video:
        raise ValueError("--use-audio-in-video needs a --video")
    messages = build_messages(args.prompt, system=args.system, images=[str(p) for p in args.image],
                              audios=[str(p) for p in args.audio], videos=[str(p) for p in args.video])
    has_media = bool(args.image or args.audio or args.video)
    if has_media:
        from omni_jax.processing.multimodal import MediaOptions, MultimodalProcessor

        options = MediaOptions(use_audio_in_video=args.use_audio_in_video, image_max_pixels=args.image_max_pixels,
                               video_fps=args.video_fps, video_max_frames=args.video_max_frames)
        batch = MultimodalProcessor.from_dir(ckpt, cfg)([messages], options)  # media errors surface before loading
    else:
        prompt = prepare_text_batch(processor, [messages])
    if not cfg.has_talker and args.wav_out is not None and not args.no_speech:
        raise ValueError(f"{ckpt}: this checkpoint has no talker, it cannot produce speech (drop --wav-out)")
    speech = cfg.has_talker and not args.no_speech
    from omni_jax.models.decoder import StackOptions

    mesh = None
    if args.mesh:
        from omni_jax.sharding import make_mesh

        mesh = make_mesh(args.mesh)  # a bad spec fails before loading
    taps = ()
    if speech:
        from omni_jax.generation.speech import speaker_id

        speaker_id(cfg, args.speaker)  # an unknown speaker fails before any generation
        taps = (cfg.talker.accept_hidden_layer - 1,)
    opts = StackOptions.uniform(cfg.thinker.text, taps=taps, mesh=mesh)
    from omni_jax.generation.thinker_engine import cache_size_for

    prompt_len = batch.input_ids.shape[1] if has_media else prompt.length
    cache_size_for(cfg.thinker.text, prompt_len, args.max_new_tokens)  # a too-long prompt fails before loading
    t0 = time.perf_counter()
    cfg, model = load_checkpoint(ckpt, dtype=args.dtype, progress=sys.stderr.isatty(), mesh=mesh)
    load_s = time.perf_counter() - t0
    params = pure_params(model)
    if has_media:
        from omni_jax.models.thinker import prepare_prompt

        prompt = prepare_prompt(params["thinker"], cfg, batch)
    engine = ThinkerEngine(cfg, params["thinker"]["text"])
    decoder = processor.tokenizer.stream_decoder(skip_special_tokens=True)
    eos = processor.eos_ids()
    ids: list[int] = []
    records = []
    t_start = time.perf_counter()
    t_first = None
    for rec in engine.stream(prompt, args.max_new_tokens, sampling, eos, seed=args.seed, opts=opts):
        tok = int(rec.tokens[0])
        records.append(rec)
        if t_first is None:
            t_first = time.perf_counter() - t_start
        ids.append(tok)
        if tok in eos:
            break
        delta = decoder.push(tok)
        if delta and not args.json:
            sys.stdout.write(delta)
            sys.stdout.flush()
    tail = decoder.finish()
    if tail and not args.json:
        sys.stdout.write(tail)
    if not args.json:
        sys.stdout.write("\n")
        sys.stdout.flush()
        print(f"[{len(ids)} tokens, first after {t_first or 0.0:.2f} s]", file=sys.stderr)
    elapsed = time.perf_counter() - t_start
    text = processor.tokenizer.decode([t for t in ids if t not in eos], skip_special_tokens=True)
    result = {
        "text": text,
        "token_ids": ids,
        "prompt_tokens": int(np.asarray(prompt.attention_mask).sum()),
        "load_s": round(load_s, 3),
        "time_to_first_token_s": round(t_first or 0.0, 4),
        "tokens_per_s": round(len(ids) / elapsed, 3) if elapsed > 0 else None,
    }
    if speech:
        from omni_jax.generation.speech import WavStreamWriter, speak_stream
        from omni_jax.generation.talker_engine import TalkerSampling

        t_speech = time.perf_counter()
        wav_out = args.wav_out or Path("demo.wav" if args.demo else "output.wav")
        t_audio = None
        with WavStreamWriter(wav_out) as writer:
            for event in speak_stream(cfg, params, records, prompt, speaker=args.speaker,
                                      talker_sampling=TalkerSampling.greedy() if args.greedy else TalkerSampling(),
                                      seed=args.seed, max_frames=args.max_speech_frames or 4095,
                                      chunk_size=args.audio_chunk_frames or 300,
                                      talker_opts=StackOptions.uniform(cfg.talker.text, mesh=mesh)):
                if event["type"] == "audio":
                    writer.write(event["wav"])
                    if t_audio is None:
                        t_audio = time.perf_counter() - t_start
                else:
                    res = event["result"]
        codes = np.asarray(res.codes[0]).reshape(-1, cfg.talker.num_code_groups)
        result.update(codec_codes=codes.astype(int).tolist(), sample_rate=res.sample_rate, wav_path=str(wav_out),
                      speech_s=round(time.perf_counter() - t_speech, 3),
                      time_to_first_audio_s=None if t_audio is None else round(t_audio, 4))
        if args.json:
            result["wav"] = [round(float(v), 6) for v in res.wavs[0]]
        else:
            ttfa = "" if t_audio is None else f", first audio after {t_audio:.2f} s"
            print(f"[speech: {len(codes)} frames, {res.wavs[0].size / res.sample_rate:.2f} s at "
                  f"{res.sample_rate} Hz -> {wav_out}{ttfa}]", file=sys.stderr)
    if args.demo:
        result["demo_random_weights"] = True
    if args.router_stats is not None:
        stats = router_stats_json(records, result["prompt_tokens"], cfg.thinker.text.num_layers)
        args.router_stats.write_text(json.dumps(stats))
    return result


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = run(args)
    except (ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"omni_jax.generate: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("omni_jax.generate: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
