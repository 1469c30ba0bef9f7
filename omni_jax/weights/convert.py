"""Convert a Hugging Face Qwen3-Omni checkpoint (safetensors, single or sharded) to omni_jax's Orbax format.

    convert_checkpoint(HF_DIR, OUT_DIR, dtype="bfloat16")   # -> the manifest; convert/hf_to_orbax.py is its CLI

Streams one tensor at a time into per-layer storage units (``orbax_io.py``), so peak memory stays near the
largest storage unit plus a group budget, whatever the checkpoint's size. Every tensor name and shape is
validated from the shard headers before anything is written. The output is written to a temporary directory
``.OUT_DIR.tmp-PID-XXXX`` beside OUT_DIR and renamed at the end: a failed or interrupted run leaves no
OUT_DIR and removes its temporary; one killed outright leaves its temporary, which the next run to the
same OUT_DIR removes. An existing OUT_DIR is never touched, and OUT_DIR's folder must exist. OUT_DIR also
gets config.json and the tokenizer / preprocessor / generation files: a complete checkpoint directory.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from omni_jax.atomic import atomic_directory, check_output_parent
from omni_jax.config import OmniConfig
from omni_jax.errors import UsageError
from omni_jax.weights import orbax_io
from omni_jax.weights.checkpoint_files import copy_aux_files
from omni_jax.weights.safetensors_io import CheckpointError, SafetensorsCheckpoint

DTYPES = ("bfloat16", "float32")


def convert_checkpoint(hf_dir: str | Path, out_dir: str | Path, dtype: str = "bfloat16", group_mb: int = 256,
                       progress: bool = True) -> dict:
    """Write ``out_dir`` (Orbax groups of at most ``group_mb`` MiB, in ``dtype``); returns its manifest."""
    from omni_jax.weights.load import name_table

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise UsageError(f"dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    if isinstance(group_mb, bool) or not isinstance(group_mb, int) or group_mb < 1:
        raise UsageError(f"group size {group_mb!r} MiB: must be an integer >= 1")
    if not hf_dir.is_dir():
        raise CheckpointError(f"{hf_dir}: not a directory")
    if out_dir.exists():
        raise CheckpointError(f"{out_dir}: already exists (remove it or choose another output directory)")
    check_output_parent(out_dir, "output directory", directory=True)
    cfg = OmniConfig.from_file(hf_dir)
    table = name_table(cfg)
    ck = SafetensorsCheckpoint(hf_dir)  # parses and checks every shard header
    # Validate the whole name set and every shape from the headers, before writing anything.
    names = set(ck.names())
    missing = sorted(set(table.slots) - names)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{hf_dir}: missing tensor {missing[0]!r}{more}")
    unexpected = sorted(names - set(table.slots))
    if unexpected:
        raise CheckpointError(f"{hf_dir}: unexpected tensor {unexpected[0]!r} (no parameter slot; does config.json "
                              "match?)")
    for name in table.slots:
        info = ck.tensors[name]
        if tuple(info.shape) != table.hf_shape(name):
            raise CheckpointError(f"{info.file}: tensor {name!r} has shape {tuple(info.shape)}, expected "
                                  f"{table.hf_shape(name)}")

    bar = None
    try:
        with atomic_directory(out_dir) as tmp:  # also removes what a killed earlier run left beside out_dir
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(table), desc="converting", unit="tensor", file=sys.stderr, dynamic_ncols=True)
            manifest = orbax_io.write_groups(tmp, table, ck.read, dtype, group_bytes=group_mb << 20,
                                             progress=None if bar is None else bar.update)
            manifest["source"] = {"format": "huggingface-safetensors", "tensors": len(table),
                                  "bytes": ck.total_bytes()}
            shutil.copyfile(hf_dir / "config.json", tmp / "config.json")
            copy_aux_files(hf_dir, tmp)
            (tmp / orbax_io.MANIFEST).write_text(json.dumps(manifest, indent=1))
    finally:
        if bar is not None:
            bar.close()
    return manifest
