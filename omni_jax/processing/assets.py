"""The tokenizer, chat template and preprocessor files that ship with the package."""

from __future__ import annotations

import shutil
from pathlib import Path

from omni_jax.weights.checkpoint_files import (AUX_FILES, RANDOM_WEIGHTS_MARKER, TOKENIZER_FILES,  # noqa: F401
                                               copy_aux_files)

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"
PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
PREPROCESSOR_FILE = PRESET_DIR / "qwen3_omni_30b_a3b_instruct.preprocessor_config.json"


def copy_tokenizer_files(out_dir: str | Path) -> None:
    """Write the real Qwen3-Omni tokenizer files and preprocessor config into a checkpoint directory."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(ASSET_DIR / name, out_dir / name)
    shutil.copyfile(PREPROCESSOR_FILE, out_dir / "preprocessor_config.json")
