"""omni_jax's converted-checkpoint format: Orbax checkpoints of bounded size, written while streaming.

A converted directory holds config.json, the tokenizer/preprocessor files, ``omni_jax_checkpoint.json``
(the manifest) and ``params/gNNNN/``: each an Orbax (StandardCheckpointHandler) checkpoint of a flat dict
of arrays. The unit of storage is one parameter, or one layer of a layer-stacked parameter, so no more
than one unit plus a group budget is ever in memory while converting, whatever the model's size (a
stacked [48, 128, 2048, 1536] expert tensor alone would be 38 GB). Loading concatenates the units back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import ml_dtypes
import numpy as np

from omni_jax.weights.mapping import NameTable, param_slice
from omni_jax.weights.safetensors_io import CheckpointError

MANIFEST = "omni_jax_checkpoint.json"
FORMAT = "omni_jax.orbax.v1"
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


@dataclass(frozen=True)
class Unit:
    param: str
    layer: int | None  # None: the whole parameter

    @property
    def key(self) -> str:
        return self.param if self.layer is None else f"{self.param}@{self.layer}"


def storage_units(table: NameTable) -> dict[Unit, list[str]]:
    """Each storage unit with the HF tensor names that fill it (in a stable order)."""
    stacked = {}
    for slot in table.slots.values():
        stacked.setdefault(slot.rule.param, slot.rule.index[:1] == ("layer",))
    units: dict[Unit, list[str]] = {}
    for path in table.param_shapes:
        if stacked.get(path):
            for layer in range(table.param_shapes[path][0]):
                units[Unit(path, layer)] = []
        else:
            units[Unit(path, None)] = []
    for name, slot in table.slots.items():
        layer = slot.index[0] if stacked[slot.rule.param] else None
        units[Unit(slot.rule.param, layer)].append(name)
    return units


def unit_shape(table: NameTable, unit: Unit) -> tuple[int, ...]:
    shape = table.param_shapes[unit.param]
    return shape if unit.layer is None else shape[1:]


def fill_unit(table: NameTable, unit: Unit, names: list[str], read: Callable[[str], np.ndarray], dtype) -> np.ndarray:
    out = np.zeros(unit_shape(table, unit), dtype)
    full_shape = table.param_shapes[unit.param]
    for name in names:
        slot = table.slots[name]
        idx = param_slice(full_shape, slot)
        if unit.layer is not None:
            idx = idx[1:]
        tensor = read(name)
        want = table.hf_shape(name)
        if tuple(tensor.shape) != want:
            raise CheckpointError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {want}")
        out[idx] = slot.rule.to_param(tensor).astype(dtype)
    return out


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def write_groups(out_dir: Path, table: NameTable, read: Callable[[str], np.ndarray], dtype_name: str,
                 group_bytes: int = 256 << 20, progress: Callable[[int], None] | None = None) -> dict:
    """Stream every unit through ``read`` into Orbax groups under out_dir/params; returns the manifest."""
    dtype = DTYPES[dtype_name]
    ckptr = _checkpointer()
    units = storage_units(table)
    groups, current, current_keys, current_bytes = [], {}, [], 0

    def flush():
        nonlocal current, current_keys, current_bytes
        if not current:
            return
        rel = f"params/g{len(groups):04d}"
        ckptr.save((out_dir / rel).absolute(), {f"u{i}": a for i, a in enumerate(current.values())})
        groups.append({"dir": rel, "units": current_keys})
        current, current_keys, current_bytes = {}, [], 0

    for unit, names in units.items():
        arr = fill_unit(table, unit, names, read, dtype)
        current[unit.key] = arr
        current_keys.append(unit.key)
        current_bytes += arr.nbytes
        if progress is not None:
            progress(len(names))
        if current_bytes >= group_bytes:
            flush()
    flush()
    return {
        "format": FORMAT,
        "dtype": dtype_name,
        "groups": groups,
        "params": {p: list(s) for p, s in table.param_shapes.items()},
    }


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: neither safetensors weights nor {MANIFEST} found") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt manifest (not JSON)") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {manifest.get('format')!r}")
    return manifest


def iter_units(directory: Path, manifest: dict) -> Iterator[tuple[str, np.ndarray]]:
    """(unit key, array) for every stored unit, one group in memory at a time."""
    ckptr = _checkpointer()
    for group in manifest["groups"]:
        gdir = (directory / group["dir"]).absolute()
        try:
            tree = ckptr.restore(gdir)
        except Exception as e:  # orbax raises many types for damaged data
            raise CheckpointError(f"{gdir}: cannot restore Orbax group ({type(e).__name__}: {e})".split("\n")[0]) from None
        for i, key in enumerate(group["units"]):
            if f"u{i}" not in tree:
                raise CheckpointError(f"{gdir}: unit {key!r} is missing")
            yield key, np.asarray(tree[f"u{i}"])


def read_params(directory: Path, param_shapes: dict[str, tuple[int, ...]], dtype,
                progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """All parameters of a converted checkpoint as flat {path: array}, checked against the model's shapes."""
    manifest = read_manifest(directory)
    stored = {p: tuple(s) for p, s in manifest["params"].items()}
    for path, shape in param_shapes.items():
        if path not in stored:
            raise CheckpointError(f"{directory}: missing parameter {path!r}")
        if stored[path] != tuple(shape):
            raise CheckpointError(f"{directory}: parameter {path!r} has shape {stored[path]}, expected {tuple(shape)}")
    extra = sorted(set(stored) - set(param_shapes))
    if extra:
        raise CheckpointError(f"{directory}: unexpected parameter {extra[0]!r} (does config.json match?)")
    out: dict[str, np.ndarray] = {}
    seen = set()
    for key, arr in iter_units(directory, manifest):
        path, _, layer = key.partition("@")
        if path not in out:
            out[path] = np.zeros(param_shapes[path], dtype)
        if layer:
            out[path][int(layer)] = arr.astype(dtype)
        else:
            out[path][...] = arr.astype(dtype)
        seen.add(key)
        if progress is not None:
            progress(1)
    missing = sorted(set(param_shapes) - set(out))
    if missing:
        raise CheckpointError(f"{directory}: missing parameter {missing[0]!r}")
    return out
