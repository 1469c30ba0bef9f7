"""Every argument of the CLI, the API and the experiment runner checked in one place, before any work.

Each argument has one name in the API and one flag on the command line (``ARGS``); a mistake gives the same
one-line message through both, naming both: ``max_new_tokens (--max-new-tokens) = 0: must be an integer
>= 1``. Ranges, types and choices are UsageError (exit code 2); an input file that is missing or
unreadable, or an output file whose folder is missing or not writable, is InputFileError (exit code 1).

    check_generate_args(max_new_tokens=..., seed=..., ...)  # API keywords -> checked values
    check_load_args(path, dtype, mesh, demo)
    check_messages(messages)                                 # -> (single, conversations)
    check_input_file("image", path); check_output_file("wav_out", path)
    check_against_config(cfg, speech=..., speaker=..., max_speech_frames=...)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omni_jax.atomic import check_output_parent
from omni_jax.errors import InputFileError, UsageError

DTYPES = ("float32", "bfloat16")
MAX_SEED = 2**31 - 1  # seeds are int32 inside the compiled programs
MAX_INT = 2**31 - 1  # counts used as static shapes (int32)


@dataclass(frozen=True)
class Arg:
    name: str  # the API keyword
    flag: str | None  # the command-line flag (None: API only)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.flag})" if self.flag else self.name


ARGS = {a.name: a for a in (
    Arg("checkpoint", "--checkpoint"), Arg("dtype", "--dtype"), Arg("mesh", "--mesh"), Arg("demo", "--demo"),
    Arg("messages", None), Arg("prompt", "--prompt"), Arg("system", "--system"),
    Arg("image", "--image"), Arg("audio", "--audio"), Arg("video", "--video"),
    Arg("use_audio_in_video", "--use-audio-in-video"), Arg("image_max_pixels", "--image-max-pixels"),
    Arg("video_fps", "--video-fps"), Arg("video_max_frames", "--video-max-frames"),
    Arg("max_new_tokens", "--max-new-tokens"), Arg("temperature", "--temperature"), Arg("top_p", "--top-p"),
    Arg("top_k", "--top-k"), Arg("seed", "--seed"), Arg("thinker_sampling", None), Arg("talker_sampling", None),
    Arg("speech", "--no-speech"), Arg("routing", "--routing"), Arg("talker_routing", "--talker-routing"),
    Arg("speaker", "--speaker"), Arg("max_speech_frames", "--max-speech-frames"),
    Arg("audio_chunk_frames", "--audio-chunk-frames"), Arg("wav_out", "--wav-out"),
    Arg("router_stats", "--router-stats"), Arg("fused", "--fused"), Arg("progress", None),
)}


def label(name: str) -> str:
    arg = ARGS.get(name)
    return arg.label if arg else name


def _show(value: Any) -> str:
    """A value as the user typed it: 0 and 0.0 both read ``0`` (a flag's 0 arrives as a float)."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return format(value, "g")
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _usage(name: str, value: Any, problem: str) -> UsageError:
    return UsageError(f"{label(name)} = {_show(value)}: {problem}")


# ------------------------------------------------------------------------------------------------ values


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = MAX_INT,
              optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if hasattr(value, "__index__") and not isinstance(value, bool):  # numpy integers
            value = int(value.__index__())
        else:
            raise _usage(name, value, "expected an integer" + (" or None" if optional else ""))
    if minimum is not None and value < minimum:
        raise _usage(name, value, f"must be an integer >= {minimum}")
    if maximum is not None and value > maximum:
        raise _usage(name, value, f"must be an integer <= {maximum}")
    return value


def check_float(name: str, value, minimum: float | None = None, minimum_open: bool = False,
                maximum: float | None = None, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)  # numpy floats
        except (TypeError, ValueError):
            raise _usage(name, value, "expected a number" + (" or None" if optional else "")) from None
    value = float(value)
    if not math.isfinite(value):
        raise _usage(name, value, "must be a finite number")
    if minimum is not None and (value < minimum or (minimum_open and value == minimum)):
        raise _usage(name, value, f"must be a number {'>' if minimum_open else '>='} {minimum:g}"
                     + (f" and <= {maximum:g}" if maximum is not None else ""))
    if maximum is not None and value > maximum:
        raise _usage(name, value, f"must be a number <= {maximum:g}")
    return value


def check_bool(name: str, value, optional: bool = False) -> bool | None:
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise _usage(name, value, "expected True or False" + (" or None" if optional else ""))
    return value


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise _usage(name, value, f"choose from {', '.join(choices)}")
    return value


def check_str(name: str, value, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _usage(name, value, "expected a string")
    return value


# ------------------------------------------------------------------------------------------------ files


def check_input_file(name: str, path, folder_ok: bool = False) -> Path:
    """An existing, readable file (or, with ``folder_ok``, a folder: a video given as frames)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise _usage(name, path, "expected a file path")
    p = Path(path)
    if folder_ok and p.is_dir():
        if not os.access(p, os.R_OK | os.X_OK):
            raise InputFileError(f"{label(name)} {p}: the folder is not readable")
        return p
    if not p.exists():
        raise InputFileError(f"{label(name)} {p}: no such file")
    if not p.is_file():
        raise InputFileError(f"{label(name)} {p}: not a file")
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise InputFileError(f"{label(name)} {p}: cannot read it ({e.strerror or e})") from None
    return p


def check_output_file(name: str, path) -> Path:
    """A file to write: its folder exists and is writable, and it is not a directory."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise _usage(name, path, "expected a file path")
    return check_output_parent(Path(path), label(name))


def check_checkpoint_dir(name: str, path) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise _usage(name, path, "expected a checkpoint directory")
    p = Path(path)
    if not p.is_dir():
        raise InputFileError(f"{label(name)} {p}: no such checkpoint directory")
    if not (p / "config.json").is_file():
        raise InputFileError(f"{label(name)} {p}: no config.json there (not a checkpoint directory)")
    return p


# ------------------------------------------------------------------------------------------------ messages

_MEDIA = ("image", "audio", "video")


def check_messages(messages) -> tuple[bool, list[list[dict]]]:
    """(single, conversations): one conversation (a list of message dicts) or a list of them."""
    def fail(problem: str):
        return UsageError(f"messages: {problem}")

    if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, (list, tuple)):
        raise fail(f"expected a conversation (a list of {{'role': ..., 'content': ...}} dicts) or a list of "
                   f"conversations, got {type(messages).__name__}")
    if not messages:
        raise fail("empty: expected at least one message")
    single = isinstance(messages[0], dict)
    conversations = [list(messages)] if single else list(messages)
    for ci, conv in enumerate(conversations):
        where = "" if single else f"conversation {ci}: "
        if not isinstance(conv, (list, tuple)) or isinstance(conv, (str, bytes)):
            raise fail(f"{where}expected a list of message dicts, got {type(conv).__name__}")
        if not conv:
            raise fail(f"{where}empty conversation")
        for mi, msg in enumerate(conv):
            at = f"{where}message {mi}"
            if not isinstance(msg, dict):
                raise fail(f"{at}: expected a dict with 'role' and 'content', got {type(msg).__name__}")
            if not isinstance(msg.get("role"), str):
                raise fail(f"{at}: needs a 'role' string")
            content = msg.get("content")
            if isinstance(content, str):
                continue
            if not isinstance(content, (list, tuple)):
                raise fail(f"{at}: 'content' must be a string or a list of items, got {type(content).__name__}")
            for ii, item in enumerate(content):
                kind = item.get("type") if isinstance(item, dict) else None
                if kind == "text":
                    if not isinstance(item.get("text"), str):
                        raise fail(f"{at} item {ii}: a text item needs a 'text' string")
                elif kind in _MEDIA:
                    if item.get(kind) is None:
                        raise fail(f"{at} item {ii}: an {kind} item needs its {kind!r} (a path or an array)")
                    if isinstance(item[kind], (str, os.PathLike)):
                        check_input_file(kind, item[kind], folder_ok=kind == "video")
                else:
                    raise fail(f"{at} item {ii}: expected a dict with 'type' text, image, audio or video")
    return single, conversations


# ------------------------------------------------------------------------------------------------ groups


def check_load_args(path=None, dtype: str = "float32", mesh=None, demo: bool = False) -> None:
    """``omni_jax.load``'s arguments (and the CLI's --checkpoint / --dtype / --mesh / --demo)."""
    check_bool("demo", demo)
    check_choice("dtype", dtype, DTYPES)
    if path is None and not demo:
        raise UsageError(f"{label('checkpoint')}: give a checkpoint directory (or demo=True / --demo for the "
                         "random-weight demo)")
    if path is not None:
        check_checkpoint_dir("checkpoint", path)
    if isinstance(mesh, str):
        from omni_jax.sharding import parse_mesh_spec

        parse_mesh_spec(mesh)  # MeshSpecError (a UsageError) names the problem


def check_sampling(thinker_sampling=None, talker_sampling=None) -> None:
    from omni_jax.generation.sampling import SamplingConfig
    from omni_jax.generation.talker_engine import TalkerSampling

    if thinker_sampling is not None and not isinstance(thinker_sampling, SamplingConfig):
        raise _usage("thinker_sampling", thinker_sampling, "expected a SamplingConfig or None")
    if talker_sampling is not None and not isinstance(talker_sampling, TalkerSampling):
        raise _usage("talker_sampling", talker_sampling, "expected a TalkerSampling or None")


def check_sampling_flags(temperature=None, top_p=None, top_k=None) -> None:
    check_float("temperature", temperature, 0.0, minimum_open=True, optional=True)
    check_float("top_p", top_p, 0.0, minimum_open=True, maximum=1.0, optional=True)
    check_int("top_k", top_k, 1, optional=True)


def check_generate_args(*, max_new_tokens=128, thinker_sampling=None, talker_sampling=None, speech=None,
                        speaker="Ethan", seed=0, use_audio_in_video=False, image_max_pixels=None, video_fps=None,
                        video_max_frames=None, max_speech_frames=4095, audio_chunk_frames=300, fused=False,
                        **extra) -> dict:
    """``OmniModel.generate / stream``'s keyword arguments, checked; returns them (numbers as Python ints and
    floats). Unknown keywords are a UsageError naming the first one."""
    if extra:
        raise UsageError(f"unexpected argument {sorted(extra)[0]!r}; see help(OmniModel.generate)")
    out = dict(
        max_new_tokens=check_int("max_new_tokens", max_new_tokens, 1),
        seed=check_int("seed", seed, 0, MAX_SEED),
        speech=check_bool("speech", speech, optional=True),
        speaker=check_str("speaker", speaker),
        use_audio_in_video=check_bool("use_audio_in_video", use_audio_in_video),
        image_max_pixels=check_int("image_max_pixels", image_max_pixels, 1, optional=True),
        video_fps=check_float("video_fps", video_fps, 0.0, minimum_open=True, optional=True),
        video_max_frames=check_int("video_max_frames", video_max_frames, 2, optional=True),
        max_speech_frames=check_int("max_speech_frames", max_speech_frames, 0),
        audio_chunk_frames=check_int("audio_chunk_frames", audio_chunk_frames, 1),
        fused=check_bool("fused", fused),
        thinker_sampling=thinker_sampling, talker_sampling=talker_sampling,
    )
    check_sampling(thinker_sampling, talker_sampling)
    return out


def check_against_config(cfg, *, speech: bool, speaker: str | None = None, max_speech_frames: int | None = None,
                         wav_out=None) -> None:
    """What only the checkpoint's config can tell: a Talker for speech, the speaker's name, the frame budget."""
    if speech and not cfg.has_talker:
        raise UsageError(f"{label('speech')}: this checkpoint has no talker, it cannot produce speech"
                         + (f" (drop {label('wav_out')})" if wav_out is not None else ""))
    if speech:
        from omni_jax.generation.speech import speaker_id

        speaker_id(cfg, speaker)  # UnknownSpeakerError names the checkpoint's speakers
        limit = cfg.talker.text.max_position_embeddings - 1
        if max_speech_frames is not None and max_speech_frames > limit:
            raise _usage("max_speech_frames", max_speech_frames, f"must be an integer <= {limit} (the Talker's "
                                                                   "context)")
