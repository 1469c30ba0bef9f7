"""The demo checkpoint's labels: the random-weights notice follows the directory however it is passed, and
its media are where the documentation says."""

from __future__ import annotations

import os

from omni_jax import demo
from omni_jax.weights.checkpoint_files import RANDOM_WEIGHTS_MARKER, copy_aux_files


def _linked_copy(src, dst, marked: bool):
    dst.mkdir()
    for f in src.iterdir():
        os.symlink(f, dst / f.name)
    if marked:
        (dst / RANDOM_WEIGHTS_MARKER).write_text("random\n")
    return dst


def test_notice_whenever_the_checkpoint_is_the_demo(tiny_thinker_only_ckpt, tmp_path, capsys):
    from omni_jax.api import OmniModel

    marked = _linked_copy(tiny_thinker_only_ckpt, tmp_path / "renamed_demo", marked=True)
    OmniModel.open(marked)  # passed as a plain path, under another name
    assert capsys.readouterr().err.strip().splitlines() == [f"{demo.RANDOM_WEIGHTS_NOTICE} [{marked}]"]
    OmniModel.open(tiny_thinker_only_ckpt)
    assert demo.RANDOM_WEIGHTS_NOTICE not in capsys.readouterr().err
    converted = tmp_path / "converted"  # what conversion and export carry along keeps the label
    converted.mkdir()
    assert RANDOM_WEIGHTS_MARKER in copy_aux_files(marked, converted) and demo.is_demo_checkpoint(converted)


def test_demo_media_live_beside_the_demo_checkpoint(tmp_path, monkeypatch):
    from omni_jax.processing.audio import load_audio
    from omni_jax.processing.image import load_image

    monkeypatch.setenv("OMNI_JAX_CACHE", str(tmp_path))
    image, audio = demo.demo_media()
    assert (image, audio) == (demo.demo_dir() / "demo_image.png", demo.demo_dir() / "demo_audio.wav")
    assert load_image(image).shape == (224, 320, 3) and load_audio(audio).shape == (32000,)
    assert sorted(p.name for p in demo.demo_dir().iterdir()) == ["demo_audio.wav", "demo_image.png"]
