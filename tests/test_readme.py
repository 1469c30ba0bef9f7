"""Every python code block of the README runs as written, in order, on the demo checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_blocks_run(demo_cache, demo_compilation_cache, tmp_path, monkeypatch, capsys):
    from omni_jax.compilation import setup_compilation_cache

    monkeypatch.setenv("OMNI_JAX_CACHE", str(demo_cache))
    monkeypatch.chdir(tmp_path)  # whatever the examples write lands here, not in the repository
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2
    namespace: dict = {}
    setup_compilation_cache(demo_compilation_cache)  # the notebook test runs the same calls in a kernel
    try:
        for i, block in enumerate(blocks, 1):
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    finally:
        setup_compilation_cache("off")
    captured = capsys.readouterr()
    assert "RANDOM weights" in captured.err and f"cached in {demo_cache}" in captured.err
    out, batch = namespace["out"], namespace["batch"]
    assert out.sample_rate == 24000 and out.wav.size > 0 and out.codec_codes.shape[1] == 16
    assert len(batch) == 2 and all(np.isfinite(r.wav).all() for r in batch)
    image, audio = namespace["image"], namespace["audio"]
    assert (image.name, audio.name) == ("demo_image.png", "demo_audio.wav") and image.parent == audio.parent
