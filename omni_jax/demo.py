"""The embedded demo: a small Qwen3-Omni checkpoint with RANDOM weights, built locally once and cached.

Real weights cannot be downloaded by this package; the demo shows the whole pipeline working end to end
(real tokenizer, real vocabulary and special ids, every component present at tiny width). Its output is
meaningless text and noise-like speech, and is labelled as such.

The checkpoint is written in the Hugging Face layout (config.json + model.safetensors + tokenizer files)
from omni_jax's own randomly initialised model, through the same name table the loader uses, so building
it needs neither torch nor transformers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

DEMO_VERSION = "v1"
DEMO_CONFIG = Path(__file__).parent / "presets" / "demo.config.json"
RANDOM_WEIGHTS_NOTICE = "omni_jax demo: RANDOM weights (a tiny untrained model); the output is not meaningful"


def cache_root() -> Path:
    env = os.environ.get("OMNI_JAX_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "omni_jax"


def demo_dir() -> Path:
    return cache_root() / f"demo-{DEMO_VERSION}"


def build_demo_checkpoint(out_dir: Path, seed: int = 0) -> Path:
    """Write the demo checkpoint to ``out_dir`` atomically (temporary directory, then rename)."""
    import jax
    from flax import nnx

    from omni_jax.config import OmniConfig
    from omni_jax.models.omni import OmniModel, hf_rules, param_shapes
    from omni_jax.processing.assets import copy_tokenizer_files
    from omni_jax.weights.mapping import NameTable, export_tensors
    from omni_jax.weights.safetensors_io import write_safetensors

    config = json.loads(DEMO_CONFIG.read_text())
    cfg = OmniConfig.from_hf(config)
    with jax.default_device(jax.devices("cpu")[0]):
        model = OmniModel(cfg, rngs=nnx.Rngs(seed))
    flat = {".".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    table = NameTable(hf_rules(cfg), param_shapes(model))
    tensors = dict(export_tensors(table, flat))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        write_safetensors(tmp / "model.safetensors",
                          [(n, t.shape, t.dtype) for n, t in sorted(tensors.items())], tensors.__getitem__)
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        (tmp / "generation_config.json").write_text(json.dumps({"do_sample": False}))
        (tmp / "DEMO_RANDOM_WEIGHTS.txt").write_text(RANDOM_WEIGHTS_NOTICE + "\n")
        copy_tokenizer_files(tmp)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def demo_media(directory: Path) -> tuple[Path, Path]:
    """A synthetic picture (colour gradient with shapes) and a 2 s two-tone chirp, made once beside the demo."""
    image, audio = directory / "demo_image.png", directory / "demo_audio.wav"
    if not image.is_file():
        from PIL import Image, ImageDraw

        y, x = np.mgrid[0:224, 0:320]
        rgb = np.stack([x * 255 // 319, y * 255 // 223, (x + y) * 255 // 542], -1).astype(np.uint8)
        img = Image.fromarray(rgb)
        draw = ImageDraw.Draw(img)
        draw.ellipse((40, 40, 140, 140), fill=(240, 200, 20))
        draw.rectangle((180, 90, 290, 190), fill=(30, 60, 200))
        img.save(image)
    if not audio.is_file():
        import wave

        t = np.arange(2 * 16000) / 16000
        sig = 0.3 * np.sin(2 * np.pi * (300 + 200 * t) * t) + 0.2 * np.sin(2 * np.pi * 880 * t)
        with wave.open(str(audio), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(16000)
            f.writeframes((sig * 32767).astype("<i2").tobytes())
    return image, audio


def ensure_demo_checkpoint(log=None) -> Path:
    """The cached demo checkpoint, built on first use."""
    d = demo_dir()
    if not (d / "config.json").is_file():
        if log is not None:
            log(f"building the demo checkpoint (random weights) in {d} ...")
        try:
            build_demo_checkpoint(d)
        except FileExistsError:
            pass  # another process built it meanwhile
    return d
