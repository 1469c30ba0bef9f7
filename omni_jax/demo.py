"""The embedded demo: a small Qwen3-Omni checkpoint with RANDOM weights, built locally once and cached.

Real weights cannot be downloaded by this package; the demo shows the whole pipeline working end to end
(real tokenizer, real vocabulary and special ids, every component present at tiny width). Its output is
meaningless text and noise-like speech, and is labelled as such.

The checkpoint is written in the Hugging Face layout (config.json + model.safetensors + tokenizer files)
from omni_jax's own randomly initialised model, through the same name table the loader uses, so building
it needs neither torch nor transformers.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from pathlib import Path

import numpy as np

from omni_jax.atomic import atomic_directory, atomic_write_bytes
from omni_jax.paths import cache_root
from omni_jax.processing.assets import RANDOM_WEIGHTS_MARKER

DEMO_VERSION = "v1"
DEMO_CONFIG = Path(__file__).parent / "presets" / "demo.config.json"
RANDOM_WEIGHTS_NOTICE = "omni_jax demo: RANDOM weights (a tiny untrained model); the output is not meaningful"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def is_demo_checkpoint(directory: str | Path) -> bool:
    """True for the demo checkpoint and anything converted, pruned or distilled from it (they carry its
    random-weights marker file), however the directory is named or passed."""
    return (Path(directory) / RANDOM_WEIGHTS_MARKER).is_file()


def announce_if_demo(directory: str | Path, log=_stderr) -> bool:
    """Print the random-weights notice when ``directory`` is (derived from) the demo checkpoint."""
    demo = is_demo_checkpoint(directory)
    if demo:
        log(f"{RANDOM_WEIGHTS_NOTICE} [{directory}]")
    return demo


def demo_dir() -> Path:
    return cache_root() / f"demo-{DEMO_VERSION}"


def build_demo_checkpoint(out_dir: Path, seed: int = 0, progress: bool = True) -> Path:
    """Write the demo checkpoint to ``out_dir`` atomically (temporary directory, then rename); with
    ``progress`` a bar on stderr follows the steps (initialising the model, then each tensor written)."""
    import jax
    from flax import nnx

    from omni_jax.config import OmniConfig
    from omni_jax.models.omni import OmniModel, hf_rules, param_shapes
    from omni_jax.processing.assets import copy_tokenizer_files
    from omni_jax.weights.mapping import NameTable, export_tensors
    from omni_jax.weights.safetensors_io import write_safetensors

    from tqdm import tqdm

    config = json.loads(DEMO_CONFIG.read_text())
    cfg = OmniConfig.from_hf(config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=2, desc="demo checkpoint: initialising the model", file=sys.stderr, disable=not progress,
              dynamic_ncols=True, bar_format="{desc} {n_fmt}/{total_fmt} [{elapsed}]") as steps, \
            atomic_directory(out_dir) as tmp:
        with jax.default_device(jax.devices("cpu")[0]), _ticking(steps):
            model = OmniModel(cfg, rngs=nnx.Rngs(seed))
        flat = {".".join(map(str, p)): np.asarray(v.get_value())
                for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
        table = NameTable(hf_rules(cfg), param_shapes(model))
        tensors = dict(export_tensors(table, flat))
        steps.update()
        steps.set_description("demo checkpoint: writing tensors")
        with tqdm(total=len(tensors), desc="demo checkpoint: tensors", unit="tensor", file=sys.stderr,
                  disable=not progress, leave=False, dynamic_ncols=True) as bar:
            def produce(name):
                bar.update()
                return tensors[name]

            write_safetensors(tmp / "model.safetensors",
                              [(n, t.shape, t.dtype) for n, t in sorted(tensors.items())], produce)
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        (tmp / "generation_config.json").write_text(json.dumps({"do_sample": False}))
        (tmp / RANDOM_WEIGHTS_MARKER).write_text(RANDOM_WEIGHTS_NOTICE + "\n")
        copy_tokenizer_files(tmp)
        steps.update()
        steps.set_description("demo checkpoint: done")
    return out_dir


@contextlib.contextmanager
def _ticking(bar, seconds: float = 1.0):
    """Refresh ``bar`` every ``seconds`` while the block runs, so its elapsed time shows the work is alive."""
    stop = threading.Event()

    def tick():
        while not stop.wait(seconds):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def demo_media(directory: str | Path | None = None) -> tuple[Path, Path]:
    """(image, audio): the demo's synthetic picture (colour gradient with shapes, 320x224 PNG) and 2 s
    two-tone chirp (16 kHz wav), made once in ``directory`` (default: the demo checkpoint's cache folder).

        image, audio = omni_jax.demo.demo_media()   # paths to use in messages
    """
    import io

    directory = demo_dir() if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    image, audio = directory / "demo_image.png", directory / "demo_audio.wav"
    if not image.is_file():
        from PIL import Image, ImageDraw

        y, x = np.mgrid[0:224, 0:320]
        rgb = np.stack([x * 255 // 319, y * 255 // 223, (x + y) * 255 // 542], -1).astype(np.uint8)
        img = Image.fromarray(rgb)
        draw = ImageDraw.Draw(img)
        draw.ellipse((40, 40, 140, 140), fill=(240, 200, 20))
        draw.rectangle((180, 90, 290, 190), fill=(30, 60, 200))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        atomic_write_bytes(image, buf.getvalue())
    if not audio.is_file():
        import wave

        t = np.arange(2 * 16000) / 16000
        sig = 0.3 * np.sin(2 * np.pi * (300 + 200 * t) * t) + 0.2 * np.sin(2 * np.pi * 880 * t)
        buf = io.BytesIO()
        with wave.open(buf, "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(16000)
            f.writeframes((sig * 32767).astype("<i2").tobytes())
        atomic_write_bytes(audio, buf.getvalue())
    return image, audio


def ensure_demo_checkpoint(log=_stderr, progress: bool = True) -> Path:
    """The cached demo checkpoint (``$OMNI_JAX_CACHE``, else ``$XDG_CACHE_HOME/omni_jax``, else
    ``~/.cache/omni_jax``), built on first use (~100 MB, with a progress bar). ``log`` (default: stderr; None:
    quiet) is told where it is cached."""
    d = demo_dir()
    if (d / "config.json").is_file():
        if log is not None:
            log(f"omni_jax demo: checkpoint cached in {d}")
        return d
    if log is not None:
        log(f"omni_jax demo: building the demo checkpoint (random weights, ~100 MB, once) in {d}")
    try:
        build_demo_checkpoint(d, progress=progress and log is not None)
    except OSError:
        if not (d / "config.json").is_file():
            raise
        # another process built it meanwhile (the rename onto its directory failed)
    return d
