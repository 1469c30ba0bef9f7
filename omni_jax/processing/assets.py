"""The tokenizer, chat template and preprocessor files that ship with the package."""

from __future__ import annotations

import shutil
from pathlib import Path

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"
PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "chat_template.json")
PREPROCESSOR_FILE = PRESET_DIR / "qwen3_omni_30b_a3b_instruct.preprocessor_config.json"
# Marks a checkpoint directory whose weights are random (the demo's, and everything converted, pruned or
# distilled from it): whatever loads it says the output is not meaningful.
RANDOM_WEIGHTS_MARKER = "DEMO_RANDOM_WEIGHTS.txt"
# Files that make a checkpoint directory complete besides weights and config.json.
AUX_FILES = TOKENIZER_FILES + ("tokenizer.json", "preprocessor_config.json", "generation_config.json",
                               "special_tokens_map.json", "video_preprocessor_config.json", RANDOM_WEIGHTS_MARKER)


def copy_tokenizer_files(out_dir: str | Path) -> None:
    """Write the real Qwen3-Omni tokenizer files and preprocessor config into a checkpoint directory."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(ASSET_DIR / name, out_dir / name)
    shutil.copyfile(PREPROCESSOR_FILE, out_dir / "preprocessor_config.json")


def copy_aux_files(src_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Copy whichever tokenizer/preprocessor/generation files ``src_dir`` has; returns their names."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    copied = []
    for name in AUX_FILES:
        if (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, out_dir / name)
            copied.append(name)
    return copied
