"""Write a model's parameters as a checkpoint directory: Hugging Face safetensors and / or omni_jax's Orbax.

    export_checkpoint(params, cfg, out_dir, ("hf", "orbax"), config_json=cfg_json, aux_dir=src_dir)
    # -> {"hf": out_dir/hf, "orbax": out_dir/orbax}

``out_dir/hf`` holds config.json + model.safetensors (or shards + index), loadable by transformers and by
omni_jax; ``out_dir/orbax`` the converted form (``convert/hf_to_orbax.py``'s layout). Both get the
tokenizer / preprocessor / generation files of ``aux_dir`` and any ``extra_files``. Tensors are produced one
at a time from the (host or device) parameters, so host memory holds one tensor, or one layer of a large
stacked parameter, at a time. Everything is written into a temporary directory beside ``out_dir`` and
renamed at the end: an interrupted or failed export leaves no ``out_dir`` (and the next export to the same
place removes a temporary a killed process left).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

import jax
import numpy as np

from omni_jax.atomic import atomic_directory, check_output_parent
from omni_jax.config import OmniConfig
from omni_jax.errors import UsageError
from omni_jax.weights import orbax_io

FORMATS = ("hf", "orbax")
# Files of a source directory that an export writes itself, never copies.
NOT_COPIED = {"config.json", "model.safetensors.index.json", orbax_io.MANIFEST}
_HOST_COPY_BYTES = 1 << 30  # device parameters up to this size are copied to the host whole when exporting


class ExportError(UsageError):
    """An export request that cannot work (unknown format, existing output, params that do not fit the config)."""


@jax.jit
def _take_layer(arr, layer):
    return jax.lax.dynamic_index_in_dim(arr, layer, 0, keepdims=False)


def dtype_name(arr) -> str:
    """The checkpoint dtype name ("float32", "bfloat16", "float16") of an array."""
    names = {np.dtype(v): k for k, v in orbax_io.DTYPES.items()}
    dt = np.dtype(arr.dtype)
    if dt not in names:
        raise ExportError(f"cannot export parameters of dtype {dt} (float32, bfloat16 or float16)")
    return names[dt]


def aux_files(directory: str | Path | None, skip: Iterable[str] = ()) -> list[Path]:
    """The files of ``directory`` an export copies: everything but weights and what the export writes itself."""
    if directory is None:
        return []
    skip = NOT_COPIED | set(skip)
    return [p for p in sorted(Path(directory).iterdir())
            if p.is_file() and p.name not in skip and not p.name.endswith(".safetensors")]


def export_checkpoint(params: dict, cfg: OmniConfig, out_dir: str | Path, formats: Iterable[str] = FORMATS, *,
                      config_json: dict, aux_dir: str | Path | None = None, skip_aux: Iterable[str] = (),
                      extra_files: dict[str, str] | None = None, dtype: str | None = None,
                      max_shard_bytes: int = 2 << 30, source: dict | None = None) -> dict[str, Path]:
    """Write ``params`` (the whole model's pure params, nested) as ``out_dir/<format>`` for each format.

    config_json: the config.json to write; it must describe ``cfg`` exactly. aux_dir: a checkpoint
    directory whose tokenizer / preprocessor / generation (and other non-weight) files are copied, except
    ``skip_aux``. extra_files: {name: text} written into each format's directory. dtype: "float32" |
    "bfloat16" | "float16" (default: the params' own). source: recorded in the Orbax manifest.
    ``out_dir`` must not exist and its folder must. Returns {format: directory}.
    """
    from omni_jax.weights.load import name_table
    from omni_jax.weights.mapping import flatten, param_slice
    from omni_jax.weights.safetensors_io import write_safetensors, write_sharded

    out_dir = Path(out_dir)
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ExportError(f"formats {formats}: choose from {', '.join(FORMATS)}")
    if out_dir.exists():
        raise ExportError(f"{out_dir}: already exists (remove it or choose another output directory)")
    check_output_parent(out_dir, "export directory", directory=True)
    if OmniConfig.from_hf(config_json) != cfg:
        raise ExportError("the config.json to write does not describe these parameters")
    flat = flatten(params)
    table = name_table(cfg)
    for path, shape in table.param_shapes.items():
        if path not in flat:
            raise ExportError(f"parameter {path!r} missing from the params")
        if tuple(flat[path].shape) != tuple(shape):
            raise ExportError(f"parameter {path!r} has shape {tuple(flat[path].shape)}, config expects {shape}")
    dtype = dtype or dtype_name(flat["thinker.text.embed"])
    if dtype not in orbax_io.DTYPES:
        raise ExportError(f"dtype {dtype!r}: choose from {', '.join(sorted(orbax_io.DTYPES))}")
    np_dtype = np.dtype(orbax_io.DTYPES[dtype])

    host_cache: dict = {}  # recent host copies: a whole (small) parameter or one layer block of a large one

    def host_block(path: str, layer: int | None) -> np.ndarray:
        arr = flat[path]
        if isinstance(arr, np.ndarray):
            return arr if layer is None else arr[layer]
        whole = layer is None or arr.nbytes <= _HOST_COPY_BYTES
        key = (path, None if whole else layer)
        if key not in host_cache:
            if len(host_cache) >= 4:
                host_cache.pop(next(iter(host_cache)))
            host_cache[key] = np.asarray(arr) if whole else np.asarray(_take_layer(arr, np.int32(layer)))
        block = host_cache[key]
        return block[layer] if whole and layer is not None else block

    def produce(name: str) -> np.ndarray:  # one HF tensor, sliced from its (possibly on-device) parameter
        slot = table.slots[name]
        shape = tuple(flat[slot.rule.param].shape)
        layer = slot.index[0] if slot.index else None
        idx = param_slice(shape, slot)[0 if layer is None else 1:]
        return np.ascontiguousarray(slot.rule.to_hf(host_block(slot.rule.param, layer)[idx]), np_dtype)

    copies = aux_files(aux_dir, set(skip_aux) | set(extra_files or {}))
    written: dict[str, Path] = {}
    with atomic_directory(out_dir) as tmp:
        for fmt in formats:
            d = tmp / fmt
            d.mkdir()
            if fmt == "hf":
                entries = [(n, table.hf_shape(n), np_dtype) for n in table.names()]
                total = sum(int(np.prod(s, dtype=np.int64)) * np_dtype.itemsize for _, s, _ in entries)
                if total <= max_shard_bytes:
                    write_safetensors(d / "model.safetensors", entries, produce)
                else:
                    write_sharded(d, entries, produce, max_shard_bytes=max_shard_bytes)
            else:
                manifest = orbax_io.write_groups(d, table, produce, dtype)
                manifest["source"] = {"format": "omni_jax-export", "tensors": len(table), **(source or {})}
                (d / orbax_io.MANIFEST).write_text(json.dumps(manifest, indent=1))
            (d / "config.json").write_text(json.dumps(config_json, indent=2, sort_keys=True))
            for p in copies:
                shutil.copyfile(p, d / p.name)
            for name, text in (extra_files or {}).items():
                (d / name).write_text(text)
            written[fmt] = out_dir / fmt
    return written
