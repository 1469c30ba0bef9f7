"""The files of a checkpoint directory besides its weights and config.json, which conversion and export
carry along."""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "chat_template.json")
# Marks a checkpoint directory whose weights are random (the demo's, and everything converted, pruned or
# distilled from it): whatever loads it says the output is not meaningful.
RANDOM_WEIGHTS_MARKER = "DEMO_RANDOM_WEIGHTS.txt"
# Files that make a checkpoint directory complete besides weights and config.json.
AUX_FILES = TOKENIZER_FILES + ("tokenizer.json", "preprocessor_config.json", "generation_config.json",
                               "special_tokens_map.json", "video_preprocessor_config.json", RANDOM_WEIGHTS_MARKER)


def copy_aux_files(src_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Copy whichever tokenizer/preprocessor/generation files ``src_dir`` has; returns their names."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    copied = []
    for name in AUX_FILES:
        if (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, out_dir / name)
            copied.append(name)
    return copied
