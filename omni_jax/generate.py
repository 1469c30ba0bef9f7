"""``python -m omni_jax.generate``: multimodal prompt in, text (and speech) out.

    python -m omni_jax.generate --checkpoint DIR --prompt "Hello" [--system TEXT] [--max-new-tokens N]
        [--image PATH]... [--audio PATH]... [--video PATH]... [--use-audio-in-video]
        [--greedy | --temperature T --top-p P --top-k K --seed S] [--dtype auto|float32|bfloat16] [--json]
        [--speaker NAME] [--wav-out FILE] [--no-speech] [--routing K=V,...] [--talker-routing K=V,...]
        [--routing-config FILE.toml] [--router-stats FILE] [--fused] [--compilation-cache DIR|off] [--verbose]
        [--mesh fsdp=2,expert=4] [--distributed | --coordinator HOST:PORT --num-processes N --process-id I]

DIR is a Hugging Face Qwen3-Omni checkpoint directory or one written by convert/hf_to_orbax.py. The prompt
is the user turn rendered with the checkpoint's chat template (with the generation prompt); its content is
the images, then the audios, then the videos, then the prompt text. Text streams
to stdout as it is produced; with ``--json`` the last stdout line is one JSON object. Speech is on when
the checkpoint has a talker (``--no-speech`` turns it off): the Talker speaks the generated text with
``--speaker`` and the 24 kHz waveform is written to ``--wav-out``.

Several hosts: run the same command on every host with ``--coordinator HOST:PORT --num-processes N
--process-id I`` (or ``--distributed`` where JAX finds them: ``JAX_COORDINATOR_ADDRESS``, TPU pods, SLURM);
the ``--mesh`` spans every process's devices and only process 0 prints and writes files.

This module parses the flags, prints and writes files; the generation is ``omni_jax.api`` (``OmniModel.prepare``
checks everything before the weights are read, ``OmniModel.run`` generates).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from omni_jax.errors import OmniJaxError, UsageError, one_line

PROG = "python -m omni_jax.generate"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UsageError: one line, exit code 2, printed like every other error."""

    def error(self, message):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
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
    p.add_argument("--dtype", default="auto",
                   help="auto (default: bfloat16 on GPU / TPU, float32 on CPU, where XLA:CPU widens every bf16 "
                        "weight stack to f32 as a whole on each step), float32 or bfloat16")
    p.add_argument("--mesh", default=None,
                   help="device mesh over axes data, fsdp, tensor, expert, e.g. fsdp=2,expert=4 (absent axes are 1): "
                        "every weight is split by its logical axes, the MoE runs expert-parallel")
    p.add_argument("--distributed", action="store_true",
                   help="join a multi-process run found by JAX (JAX_COORDINATOR_ADDRESS, TPU pods, SLURM)")
    p.add_argument("--coordinator", default=None, help="multi-process run: process 0's HOST:PORT")
    p.add_argument("--num-processes", type=int, default=None, help="multi-process run: how many processes")
    p.add_argument("--process-id", type=int, default=None, help="multi-process run: this process's index")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    p.add_argument("--speaker", default="Ethan", help="talker voice (case-insensitive; e.g. Ethan, Chelsie, Aiden)")
    p.add_argument("--wav-out", type=Path, default=None, help="where to write the speech (default output.wav)")
    p.add_argument("--no-speech", action="store_true", help="text only, even if the checkpoint has a talker")
    p.add_argument("--max-speech-frames", type=int, default=None,
                   help="codec frames (80 ms each) at most (default 4095; 40 with --demo)")
    p.add_argument("--audio-chunk-frames", type=int, default=None,
                   help="stream speech in pieces of this many codec frames, each appended to --wav-out as soon as "
                        "it is decoded (default 300 = HF's chunked_decode, whose waveform it equals; 10 with --demo)")
    p.add_argument("--routing", default=None, metavar="KEY=VALUE,...",
                   help="Thinker routing for every MoE layer, e.g. top_k=4,temperature=0.5 (keys: top_k, top_p, "
                        "temperature, bias, bias_selection_only, expert_keep_mask, random_seed, capacity_factor, "
                        "norm_topk_prob; a [list] with one value per layer routes each layer its own way)")
    p.add_argument("--talker-routing", default=None, metavar="KEY=VALUE,...",
                   help="Talker routing, same keys as --routing")
    p.add_argument("--routing-config", type=Path, default=None, metavar="FILE.toml",
                   help="routing from the [routing] table of a TOML file (thinker_top_k = 4, talker_top_k = 4, ...: "
                        "the experiment files' keys); --routing / --talker-routing override its keys. A file that "
                        "cannot be read or parsed is a bad argument of this flag (exit 2)")
    p.add_argument("--router-stats", type=Path, default=None,
                   help="write per-layer expert counts (Thinker prompt and generated tokens, Talker frames) to this "
                        "JSON file")
    p.add_argument("--fused", action="store_true",
                   help="run the whole generation as one jitted XLA program (same output; nothing streams)")
    p.add_argument("--compilation-cache", default=None, metavar="DIR|off",
                   help="JAX's persistent compilation cache (default: $OMNI_JAX_COMPILATION_CACHE, else "
                        "~/.cache/omni_jax/jax_compilation); 'off' disables it")
    p.add_argument("--verbose", action="store_true",
                   help="print the XLA programs this call compiled (name, count, seconds) to stderr")
    return p


def thinker_sampling(args, checkpoint: Path):
    """--greedy, else the flags, else the checkpoint's generation_config.json, else greedy (HF's default)."""
    from omni_jax.generation.sampling import SamplingConfig
    from omni_jax.processing.tokenizer import TokenizerFileError

    if args.greedy:
        return SamplingConfig.greedy()
    gen = {}
    gpath = checkpoint / "generation_config.json"
    if gpath.is_file():
        try:
            gen = json.loads(gpath.read_text())
        except json.JSONDecodeError:
            raise TokenizerFileError(f"{gpath}: not valid JSON") from None
    explicit = any(v is not None for v in (args.temperature, args.top_p, args.top_k))
    do_sample = explicit or bool(gen.get("do_sample", "temperature" in gen or "top_p" in gen))
    if not do_sample:
        return SamplingConfig.greedy(gen.get("repetition_penalty", 1.0))
    try:
        return SamplingConfig(
            do_sample=True,
            temperature=args.temperature if args.temperature is not None else gen.get("temperature", 1.0),
            top_p=args.top_p if args.top_p is not None else gen.get("top_p"),
            top_k=args.top_k if args.top_k is not None else gen.get("top_k"),
            repetition_penalty=gen.get("repetition_penalty", 1.0),
        )
    except ValueError as e:
        raise UsageError(f"sampling: {e}") from None


def routing_options(args, cfg) -> tuple:
    """(Thinker routing, Talker routing): one RoutingConfig per layer each, or None for the model's routing."""
    from omni_jax.moe.routing_spec import parse_routing_flag, read_routing_file, routing_from_settings

    settings = {"thinker": {}, "talker": {}}
    sources = {"thinker": [], "talker": []}
    if args.routing_config is not None:
        for stack, values in read_routing_file(args.routing_config).items():
            settings[stack].update(values)
            if values:
                sources[stack].append(str(args.routing_config))
    for stack, flag, text in (("thinker", "--routing", args.routing), ("talker", "--talker-routing",
                                                                       args.talker_routing)):
        if text is not None:
            settings[stack].update(parse_routing_flag(text, flag))
            sources[stack].append(flag)
    out = []
    for stack in ("thinker", "talker"):
        if not settings[stack]:
            out.append(None)
            continue
        if stack == "talker" and not cfg.has_talker:
            raise UsageError(f"{' and '.join(sources[stack])}: this checkpoint has no talker to route")
        text_cfg = cfg.thinker.text if stack == "thinker" else cfg.talker.text
        out.append(routing_from_settings(settings[stack], text_cfg, " and ".join(sources[stack])))
    return tuple(out)


def check_flags(args) -> None:
    """Every flag that needs no checkpoint, by the same checks as the API's arguments (``omni_jax.validation``),
    before anything is read, built or loaded: numbers, the input files, and the folders outputs go to."""
    from omni_jax import validation as v

    if args.dtype != v.AUTO_DTYPE:
        v.check_choice("dtype", args.dtype, v.DTYPES)
    v.check_generate_args(max_new_tokens=args.max_new_tokens, seed=args.seed, speaker=args.speaker,
                          image_max_pixels=args.image_max_pixels, video_fps=args.video_fps,
                          video_max_frames=args.video_max_frames,
                          max_speech_frames=0 if args.max_speech_frames is None else args.max_speech_frames,
                          audio_chunk_frames=1 if args.audio_chunk_frames is None else args.audio_chunk_frames)
    v.check_sampling_flags(args.temperature, args.top_p, args.top_k)
    if args.use_audio_in_video and not args.video:
        raise UsageError(f"{v.label('use_audio_in_video')}: needs a --video")
    for name, paths in (("image", args.image), ("audio", args.audio), ("video", args.video)):
        for path in paths:
            v.check_input_file(name, path, folder_ok=name == "video")
    if args.checkpoint is not None:
        v.check_checkpoint_dir("checkpoint", args.checkpoint)
    elif not args.demo:
        raise UsageError(f"{v.label('checkpoint')}: required (or --demo for the random-weight demo)")
    if args.wav_out is not None:
        v.check_output_file("wav_out", args.wav_out)
    if args.router_stats is not None:
        v.check_output_file("router_stats", args.router_stats)
    if args.mesh is not None:
        from omni_jax.sharding import parse_mesh_spec

        parse_mesh_spec(args.mesh)
    distributed_flags(args)


def distributed_flags(args):
    """The multi-process flags as ``omni_jax.distributed.Distributed`` (None: one process); checked here."""
    from omni_jax.distributed import Distributed

    if not (args.distributed or args.coordinator or args.num_processes is not None or args.process_id is not None):
        return None
    return Distributed(args.coordinator, args.num_processes, args.process_id).check()


class _WavOut:
    """The speech file, opened when the first piece arrives (so nothing is written before speech exists):
    streamed to NAME.partial, renamed to NAME by ``close()``; ``abort()`` removes the partial file and leaves an
    existing NAME as it was."""

    def __init__(self, path: Path):
        self.path, self.writer = path, None

    def write(self, wav) -> None:
        if self.writer is None:
            from omni_jax.generation.speech import WavStreamWriter

            self.writer = WavStreamWriter(self.path)
        self.writer.write(wav)

    def close(self) -> None:
        if self.writer is None:
            import numpy as np

            self.write(np.zeros(0, np.float32))
        self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def prepare(args):
    """Everything before the weights are read: every flag checked, the demo built if asked for, the config,
    tokenizer and media read, the request prepared. Returns (model without weights, request, wav path or None
    when there is no speech)."""
    check_flags(args)
    model = open_model(args)
    return (model, *prepare_request(model, args))


def open_model(args):
    """The checkpoint (or the demo, built on first use) without its weights."""
    from omni_jax.api import OmniModel

    ckpt = args.checkpoint
    if args.demo and ckpt is None:
        from omni_jax.demo import ensure_demo_checkpoint

        ckpt = ensure_demo_checkpoint()  # says where it is cached; OmniModel.open prints the random-weights notice
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
    return OmniModel.open(ckpt, dtype=args.dtype, mesh=args.mesh, distributed=distributed_flags(args),
                          compilation_cache=args.compilation_cache)


def prepare_request(model, args):
    """The request of the flags for an opened model: (request, wav path or None when there is no speech)."""
    from omni_jax import validation
    from omni_jax.processing.chat import build_messages

    cfg, ckpt = model.cfg, model.directory
    if not cfg.has_talker and args.wav_out is not None and not args.no_speech:
        from omni_jax.generation.speech import NoTalkerError

        raise NoTalkerError(f"{ckpt}: this checkpoint has no talker, it cannot produce speech (drop --wav-out)")
    from omni_jax.generation.talker_engine import TalkerSampling

    routing, talker_routing = routing_options(args, cfg)
    speech = cfg.has_talker and not args.no_speech
    messages = build_messages(args.prompt, system=args.system, images=[str(p) for p in args.image],
                              audios=[str(p) for p in args.audio], videos=[str(p) for p in args.video])
    request = model.prepare(
        messages, max_new_tokens=args.max_new_tokens, thinker_sampling=thinker_sampling(args, ckpt),
        talker_sampling=TalkerSampling.greedy() if args.greedy else TalkerSampling(), speech=speech,
        speaker=args.speaker, seed=args.seed, use_audio_in_video=args.use_audio_in_video,
        image_max_pixels=args.image_max_pixels, video_fps=args.video_fps, video_max_frames=args.video_max_frames,
        max_speech_frames=4095 if args.max_speech_frames is None else args.max_speech_frames,
        audio_chunk_frames=args.audio_chunk_frames or 300, routing=routing, talker_routing=talker_routing,
        fused=args.fused)
    wav_path = (args.wav_out or Path("demo.wav" if args.demo else "output.wav")) if speech else None
    if wav_path is not None:
        validation.check_output_file("wav_out", wav_path)
    return request, wav_path


def run(args) -> dict:
    import time

    import numpy as np

    from omni_jax.compilation import CompileLog
    from omni_jax.distributed import is_primary

    model, request, wav_path = prepare(args)
    speech = wav_path is not None
    primary = is_primary()  # in a multi-process run only process 0 prints and writes files
    out = sys.stdout if primary else open(os.devnull, "w")
    err = sys.stderr if primary else out

    def on_text(row: int, delta: str) -> None:
        if not args.json:
            out.write(delta)
            out.flush()

    wav_out = _WavOut(wav_path) if speech and primary else None
    with CompileLog() as log:
        load_s = model.load_weights(progress=sys.stderr.isatty() and primary)
        t0 = time.perf_counter()
        try:
            res = model.run(request, on_text=on_text, on_audio=None if wav_out is None else lambda i, w: wav_out.write(w))
        except BaseException:  # an error or an interruption: no wav that looks complete, an existing one kept
            if wav_out is not None:
                wav_out.abort()
            raise
        if wav_out is not None:
            wav_out.close()
    t = res.extras
    n = len(res.token_ids)
    thinker_s = t.get("thinker_s", t["total_s"])
    result = {
        "text": res.text,
        "token_ids": res.token_ids,
        "prompt_tokens": res.router.prompt_tokens,
        "load_s": round(load_s, 3),
        "compile_s": round(log.compile_s, 3),
        "compiled_programs": log.compiled,
        "time_to_first_token_s": round(t.get("time_to_first_token_s") or t["total_s"], 4),
        "tokens_per_s": round(n / thinker_s, 3) if thinker_s > 0 else None,
    }
    if res.reasoning is not None:
        result["reasoning"] = res.reasoning
    if not args.json:
        out.write("\n")
        out.flush()
        print(f"[{n} tokens, first after {result['time_to_first_token_s']:.2f} s]", file=err)
    if speech:
        ttfa = t.get("time_to_first_audio_s", t["total_s"] if res.wav is not None and res.wav.size else None)
        result.update(codec_codes=np.asarray(res.codec_codes).astype(int).tolist(), sample_rate=res.sample_rate,
                      wav_path=str(wav_path), speech_s=round(time.perf_counter() - t0 - thinker_s, 3),
                      time_to_first_audio_s=None if ttfa is None else round(ttfa, 4))
        if args.json:
            result["wav"] = [round(float(v), 6) for v in res.wav]
        else:
            first = "" if ttfa is None else f", first audio after {ttfa:.2f} s"
            print(f"[speech: {len(res.codec_codes)} frames, {res.wav.size / res.sample_rate:.2f} s at "
                  f"{res.sample_rate} Hz -> {wav_path}{first}]", file=err)
    if args.demo:
        result["demo_random_weights"] = True
    if args.fused:
        result["fused"] = True
    if args.router_stats is not None and primary:
        from omni_jax.atomic import atomic_write_text

        atomic_write_text(args.router_stats, json.dumps(res.router.to_json()))
    if args.verbose:
        print(f"[XLA programs of this call (after the weights were read: {load_s:.2f} s)]\n{log.table()}",
              file=err)
    result["_primary"] = primary
    return result


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        result = run(args)
    except OmniJaxError as e:
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the file system failing under us (disk full, a folder removed meanwhile)
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    if args.json and result.pop("_primary"):
        print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    from omni_jax.atomic import install_interrupt_handlers

    install_interrupt_handlers()  # SIGINT / SIGTERM: no output that looks complete, existing files untouched
    code = main()
    if code == 130:
        # interrupted: its files are already cleaned up; leave without tearing the interpreter down while XLA's
        # threads may still run the interrupted computation (that teardown crashed with SIGSEGV once in CI)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
