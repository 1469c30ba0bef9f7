"""What the fuzzing feeds and checks: small real input files, the decoders that read them, and the property.

The property, for every input: the only outcomes are a valid result or an ``OmniJaxError`` whose message is
one line; never another exception, never a hang (each case runs under a time limit), never a partial
output file. ``run_case`` checks it and raises ``FuzzFailure`` otherwise. Inputs are mutations of a real
file (``truncate``, ``flip_bits``, ``overwrite``) or random bytes.

Used by ``python -m omni_jax.bench fuzz`` (thousands of cases, seeded) and tests/test_fuzz.py (hypothesis).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from omni_jax.errors import OmniJaxError

CASE_SECONDS = 20.0  # a case taking longer than this is a hang


class FuzzFailure(AssertionError):
    """The property broke: another exception, a hang, a multi-line message or a partial output."""


class CaseTimeout(BaseException):
    """Raised by the alarm inside a case that runs too long (a BaseException: decoders cannot swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def alarm(signum, frame):
        raise CaseTimeout

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------- mutations


def truncate(data: bytes, n: int) -> bytes:
    return data[: max(0, min(n, len(data)))]


def flip_bits(data: bytes, bits: list[int]) -> bytes:
    out = bytearray(data)
    for b in bits:
        if out:
            b %= 8 * len(out)
            out[b // 8] ^= 1 << (b % 8)
    return bytes(out)


def overwrite(data: bytes, offset: int, patch: bytes) -> bytes:
    out = bytearray(data)
    offset = max(0, min(offset, len(out)))
    out[offset: offset + len(patch)] = patch
    return bytes(out)


def random_mutation(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """(kind, bytes): one of the mutations above with random parameters, or random bytes."""
    kind = ["random", "truncate", "flip", "header", "splice"][int(rng.integers(5))]
    if kind == "random":
        return kind, rng.bytes(int(rng.integers(0, 512)))
    if kind == "truncate":
        return kind, truncate(data, int(rng.integers(0, len(data) + 1)))
    if kind == "flip":
        return kind, flip_bits(data, rng.integers(0, 8 * len(data), int(rng.integers(1, 9))).tolist())
    if kind == "header":  # the first bytes decide how the rest is read
        head = min(len(data), 128)
        return kind, overwrite(data, int(rng.integers(0, head + 1)), rng.bytes(int(rng.integers(1, 9))))
    a, b = sorted(rng.integers(0, len(data) + 1, 2).tolist())  # a chunk moved: lengths and offsets disagree
    return kind, data[:a] + data[b:] + data[a:b]


# ---------------------------------------------------------------------------------------------- samples


def png_bytes(fmt: str = "PNG") -> bytes:
    from PIL import Image

    y, x = np.mgrid[0:40, 0:48]
    rgb = np.stack([x * 5, y * 6, (x + y) * 3], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def audio_bytes(fmt: str) -> bytes:
    import soundfile as sf

    t = np.arange(4800) / 16000
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, format=fmt)
    return buf.getvalue()


def mp4_bytes() -> bytes:
    """4 frames of 32x32 (mpeg4) with a 0.25 s AAC audio track."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        v = c.add_stream("mpeg4", rate=8)
        v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
        a = c.add_stream("aac", rate=16000)
        a.layout = "mono"
        for i in range(4):
            img = np.full((32, 32, 3), 40 * i, np.uint8)
            for packet in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in v.encode():
            c.mux(packet)
        samples = (0.2 * np.sin(np.arange(4096) / 5)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in a.encode(frame):
            c.mux(packet)
        for packet in a.encode():
            c.mux(packet)
    return buf.getvalue()


def small_config_json() -> dict:
    """The demo's thinker at a 512-token vocabulary: a checkpoint of a few MB, every tensor kind present."""
    from omni_jax.demo import DEMO_CONFIG

    config = json.loads(DEMO_CONFIG.read_text())
    for key in ("talker_config", "code2wav_config"):
        config.pop(key, None)
    config["enable_audio_output"] = False
    config["thinker_config"]["text_config"]["vocab_size"] = 512
    return config


def safetensors_bytes(config: dict) -> bytes:
    """A complete HF checkpoint shard for ``config`` (random fp32 values), as bytes."""
    import tempfile

    from omni_jax.config import OmniConfig
    from omni_jax.weights.load import name_table
    from omni_jax.weights.safetensors_io import write_safetensors

    table = name_table(OmniConfig.from_hf(config))
    rng = np.random.default_rng(0)
    entries = [(n, table.hf_shape(n), np.float32) for n in sorted(table.names())]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        write_safetensors(path, entries, lambda n: rng.standard_normal(table.hf_shape(n)).astype(np.float32))
        return path.read_bytes()


# ---------------------------------------------------------------------------------------------- targets


@dataclass
class Target:
    """``write(work, data) -> input path``; ``run(path, work)`` decodes it; ``outputs_ok(work, valid)``
    checks the outputs left after a valid result (True) or an error (False)."""

    name: str
    sample: bytes
    write: Callable[[Path, bytes], Path]
    run: Callable[[Path, Path], object]
    outputs_ok: Callable[[Path, bool], str | None] = lambda work, valid: None


def _file_writer(name: str):
    def write(work: Path, data: bytes) -> Path:
        path = work / name
        path.write_bytes(data)
        return path

    return write


def _image(path: Path, work: Path):
    from omni_jax.processing.image import preprocess_image

    return preprocess_image(str(path))


def _audio(path: Path, work: Path):
    from omni_jax.processing.audio import load_features

    return load_features([path])


def _video(path: Path, work: Path):
    from omni_jax.processing.multimodal import load_video_audio
    from omni_jax.processing.video import preprocess_video

    return preprocess_video(str(path)), load_video_audio(path)


def _toml(path: Path, work: Path):
    from omni_jax.experiments.spec import load_spec

    return load_spec(path)


def _checkpoint_writer(config: dict):
    def write(work: Path, data: bytes) -> Path:
        ckpt = work / "ckpt"
        ckpt.mkdir(exist_ok=True)
        (ckpt / "config.json").write_text(json.dumps(config))
        (ckpt / "model.safetensors").write_bytes(data)
        return ckpt

    return write


def _safetensors(config: dict):
    from omni_jax.config import OmniConfig

    cfg = OmniConfig.from_hf(config)

    def run(ckpt: Path, work: Path):
        from omni_jax.weights import load_flat_params

        return load_flat_params(ckpt, cfg)

    return run


def _convert(ckpt: Path, work: Path):
    from omni_jax.weights.convert import convert_checkpoint

    out = work / "out"
    if out.exists():
        shutil.rmtree(out)
    return convert_checkpoint(ckpt, out, "float32", progress=False)


def _converted_outputs(work: Path, valid: bool) -> str | None:
    out = work / "out"
    left = sorted(p.name for p in work.iterdir() if p.name.startswith(".out.tmp-"))
    if left:
        return f"temporaries left: {left}"
    if valid and not ((out / "omni_jax_checkpoint.json").is_file() and (out / "config.json").is_file()):
        return "a successful conversion left an incomplete output"
    if not valid and out.exists():
        return "a failed conversion left an output directory"
    return None


# ---------------------------------------------------------------------------------------------- CLI flags

NUMERIC_FLAGS = {  # flag: "int" | "float"
    "--max-new-tokens": "int", "--image-max-pixels": "int", "--video-max-frames": "int", "--top-k": "int",
    "--seed": "int", "--max-speech-frames": "int", "--audio-chunk-frames": "int", "--video-fps": "float",
    "--temperature": "float", "--top-p": "float",
}
EDGE_INTS = [0, 1, 2, -1, -2, 2**31 - 1, 2**31, 2**32, -2**31, 2**63, -2**63, 10**30]
EDGE_FLOATS = ["0", "-0.0", "1e-320", "1", "0.5", "1.0000001", "-1", "1e308", "inf", "-inf", "nan", "1e400"]


def flags_checkpoint(directory: Path) -> Path:
    """A checkpoint directory without weights (the demo's config, the real tokenizer): all the CLI reads
    before it loads a model."""
    from omni_jax.demo import DEMO_CONFIG
    from omni_jax.processing.assets import copy_tokenizer_files

    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DEMO_CONFIG, directory / "config.json")
    copy_tokenizer_files(directory)
    return directory


def random_flags(rng: np.random.Generator) -> list[str]:
    """1-3 numeric flags with edge, random or out-of-range values (as text, as a shell passes them)."""
    argv = []
    for flag in rng.choice(sorted(NUMERIC_FLAGS), int(rng.integers(1, 4)), replace=False):
        kind, pick = NUMERIC_FLAGS[flag], int(rng.integers(3))
        if kind == "int":
            value = [str(EDGE_INTS[int(rng.integers(len(EDGE_INTS)))]), str(int(rng.integers(-10**6, 10**6))),
                     str(int(rng.integers(-2**62, 2**62)))][pick]
        else:
            value = [EDGE_FLOATS[int(rng.integers(len(EDGE_FLOATS)))], repr(float(rng.normal() * 10)),
                     repr(float(rng.uniform(-1e300, 1e300)))][pick]
        argv += [str(flag), value]
    return argv


def classify(label: str, run: Callable[[], object], seconds: float = CASE_SECONDS) -> str:
    """Run one case under a time limit: "valid", or "error" for an OmniJaxError with a one-line message;
    FuzzFailure (naming ``label``) for a longer message, a timeout or any other exception."""
    try:
        with time_limit(seconds):
            run()
        return "valid"
    except OmniJaxError as e:
        if len([line for line in str(e).splitlines() if line.strip()]) != 1:
            raise FuzzFailure(f"{label}: {type(e).__name__} message is not one line: {str(e)!r}") from e
        return "error"
    except CaseTimeout:
        raise FuzzFailure(f"{label}: a case ran longer than {seconds} s") from None
    except Exception as e:
        raise FuzzFailure(f"{label}: {type(e).__name__}: {e}".splitlines()[0]) from e


_OPENED: dict = {}


def run_flags_case(checkpoint: Path, flags: list[str], work: Path, seconds: float = CASE_SECONDS) -> str:
    """The CLI's checks and request preparation (no weights) for ``flags``: "valid" or "error"; FuzzFailure
    otherwise. The checkpoint is opened once (the numeric flags do not change what is opened)."""
    from omni_jax.generate import build_parser, check_flags, open_model, prepare_request

    argv = ["--checkpoint", str(checkpoint), "--prompt", "hi", "--wav-out", str(work / "x.wav"),
            "--compilation-cache", "off", *flags]

    def run():
        args = build_parser().parse_args(argv)
        check_flags(args)
        if str(checkpoint) not in _OPENED:
            _OPENED[str(checkpoint)] = open_model(args)
        prepare_request(_OPENED[str(checkpoint)], args)

    outcome = classify(f"cli-flags {flags}", run, seconds)
    if any(work.iterdir()):
        raise FuzzFailure(f"cli-flags {flags}: wrote {sorted(p.name for p in work.iterdir())} before any work")
    return outcome


def make_targets(names: list[str] | None = None) -> dict[str, Target]:
    """The fuzz targets, by name (all of them by default)."""
    from omni_jax.experiments.spec import shipped_experiments

    builders = {
        "image-png": lambda: Target("image-png", png_bytes("PNG"), _file_writer("x.png"), _image),
        "image-jpeg": lambda: Target("image-jpeg", png_bytes("JPEG"), _file_writer("x.jpg"), _image),
        "audio-wav": lambda: Target("audio-wav", audio_bytes("WAV"), _file_writer("x.wav"), _audio),
        "audio-flac": lambda: Target("audio-flac", audio_bytes("FLAC"), _file_writer("x.flac"), _audio),
        "audio-mp3": lambda: Target("audio-mp3", audio_bytes("MP3"), _file_writer("x.mp3"), _audio),
        "video-mp4": lambda: Target("video-mp4", mp4_bytes(), _file_writer("x.mp4"), _video),
        "toml": lambda: Target("toml", shipped_experiments()[0].read_bytes(), _file_writer("exp.toml"), _toml),
    }
    config = None

    def checkpoint_target(name):
        nonlocal config
        config = config or small_config_json()
        sample = safetensors_bytes(config)
        if name == "safetensors":
            return Target(name, sample, _checkpoint_writer(config), _safetensors(config))
        return Target(name, sample, _checkpoint_writer(config), _convert, _converted_outputs)

    builders["safetensors"] = lambda: checkpoint_target("safetensors")
    builders["converter"] = lambda: checkpoint_target("converter")
    names = list(builders) if names is None else names
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise ValueError(f"unknown fuzz target {unknown[0]!r}; choose from {', '.join(builders)}")
    return {n: builders[n]() for n in names}


def run_case(target: Target, data: bytes, work: Path, seconds: float = CASE_SECONDS) -> str:
    """"valid" or "error" (an OmniJaxError with a one-line message); FuzzFailure for anything else."""
    path = target.write(work, data)
    outcome = classify(target.name, lambda: target.run(path, work), seconds)
    problem = target.outputs_ok(work, outcome == "valid")
    if problem:
        raise FuzzFailure(f"{target.name}: {problem}")
    return outcome
