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

from omni_jax.weights.mapping import NameTable, aligned_zeros, param_slice
from omni_jax.weights.safetensors_io import CheckpointError

MANIFEST = "omni_jax_checkpoint.json"
FORMAT = "omni_jax.orbax.v1"
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


@dataclass(frozen=True)
class Unit:
    """A parameter, or one layer of a layer-stacked one, optionally only rows [b0, b1) of its first axis
    (a block of experts of one layer, or a block of rows of a large embedding)."""

    param: str
    layer: int | None = None
    experts: tuple[int, int] | None = None  # the block on the first axis after the layer axis

    @property
    def key(self) -> str:
        layer = "" if self.layer is None else str(self.layer)
        block = "" if self.experts is None else f"{self.experts[0]}:{self.experts[1]}"
        return f"{self.param}|{layer}|{block}"

    @classmethod
    def parse(cls, key: str) -> "Unit":
        param, layer, block = key.split("|")
        return cls(param, int(layer) if layer else None,
                   tuple(int(e) for e in block.split(":")) if block else None)

    def index(self) -> tuple:
        """Where the unit sits in the full parameter array."""
        idx: tuple = ()
        if self.layer is not None:
            idx = (self.layer,)
        if self.experts is not None:
            idx = idx + (slice(*self.experts),)
        return idx


def storage_units(table: NameTable, max_unit_bytes: int = 256 << 20, itemsize: int = 2) -> dict[Unit, list[str]]:
    """Each storage unit with the HF tensor names that fill it (in a stable order).

    Layer-stacked parameters are stored per layer; expert-stacked ones per block of experts small enough
    that a unit stays under ``max_unit_bytes`` (at ``itemsize`` bytes per value).
    """
    kind = {}
    for slot in table.slots.values():
        kind.setdefault(slot.rule.param, slot.rule.index[:2])
    units: dict[Unit, list[str]] = {}
    where: dict[tuple, Unit] = {}
    for path, shape in table.param_shapes.items():
        k = kind.get(path, ())
        if k[:1] != ("layer",):
            units[Unit(path)] = []
            continue
        for layer in range(shape[0]):
            if k == ("layer", "expert"):
                per_expert = int(np.prod(shape[2:], dtype=np.int64)) * itemsize
                block = max(1, min(shape[1], max_unit_bytes // max(per_expert, 1)))
                for e0 in range(0, shape[1], block):
                    u = Unit(path, layer, (e0, min(e0 + block, shape[1])))
                    units[u] = []
                    for e in range(*u.experts):
                        where[(path, layer, e)] = u
            else:
                units[Unit(path, layer)] = []
    for name, slot in table.slots.items():
        path = slot.rule.param
        k = kind[path]
        if k[:1] != ("layer",):
            units[Unit(path)].append(name)
        elif k == ("layer", "expert"):
            units[where[(path, slot.index[0], slot.index[1])]].append(name)
        else:
            units[Unit(path, slot.index[0])].append(name)
    return units


def unit_shape(table: NameTable, unit: Unit) -> tuple[int, ...]:
    shape = table.param_shapes[unit.param]
    if unit.layer is None:
        return shape
    if unit.experts is None:
        return shape[1:]
    return (unit.experts[1] - unit.experts[0],) + tuple(shape[2:])


def fill_unit(table: NameTable, unit: Unit, names: list[str], read: Callable[[str], np.ndarray], dtype) -> np.ndarray:
    full_shape = table.param_shapes[unit.param]
    if len(names) == 1 and unit.layer is None and table.slots[names[0]].rule.part is None:
        # one tensor is the whole parameter (embeddings, heads): convert it without a second buffer
        tensor = read(names[0])
        want = table.hf_shape(names[0])
        if tuple(tensor.shape) != want:
            raise CheckpointError(f"tensor {names[0]!r} has shape {tuple(tensor.shape)}, expected {want}")
        return np.ascontiguousarray(table.slots[names[0]].rule.to_param(tensor), dtype=dtype)
    out = np.zeros(unit_shape(table, unit), dtype)
    for name in names:
        slot = table.slots[name]
        idx = param_slice(full_shape, slot)
        if unit.layer is not None:
            idx = idx[1:]
        if unit.experts is not None:
            idx = (idx[0] - unit.experts[0],) + idx[1:]
        tensor = read(name)
        want = table.hf_shape(name)
        if tuple(tensor.shape) != want:
            raise CheckpointError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {want}")
        out[idx] = slot.rule.to_param(tensor)
    return out


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise), so peak memory stays bounded."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def write_groups(out_dir: Path, table: NameTable, read: Callable[[str], np.ndarray], dtype_name: str,
                 group_bytes: int = 256 << 20, progress: Callable[[int], None] | None = None) -> dict:
    """Stream every unit through ``read`` into Orbax groups under out_dir/params; returns the manifest.

    A group collects units until it holds ``group_bytes``; a unit that would overflow it starts a new one.
    Orbax copies what it saves once, so peak memory is about twice the largest group.
    """
    dtype = DTYPES[dtype_name]
    ckptr = _checkpointer()
    units = storage_units(table, max_unit_bytes=group_bytes, itemsize=np.dtype(dtype).itemsize)
    groups, current, current_keys, current_bytes = [], {}, [], 0

    def flush():
        nonlocal current, current_keys, current_bytes
        if not current:
            return
        rel = f"params/g{len(groups):04d}"
        ckptr.save((out_dir / rel).absolute(), {f"u{i}": a for i, a in enumerate(current.values())})
        groups.append({"dir": rel, "units": current_keys})
        current, current_keys, current_bytes = {}, [], 0
        release_freed_memory()

    for unit, names in units.items():
        if current_bytes and current_bytes + int(np.prod(unit_shape(table, unit))) * np.dtype(dtype).itemsize > group_bytes:
            flush()
        arr = fill_unit(table, unit, names, read, dtype)
        if arr.nbytes > group_bytes and unit.experts is None and arr.ndim >= 1 and arr.shape[0] > 1:
            # a large single parameter (embedding, lm_head): saved in row blocks, one group each, because
            # Orbax holds a copy of what it saves
            rows = max(1, group_bytes // max(arr.nbytes // arr.shape[0], 1))
            for r0 in range(0, arr.shape[0], rows):
                sub = Unit(unit.param, unit.layer, (r0, min(r0 + rows, arr.shape[0])))
                current[sub.key] = arr[r0: r0 + rows]
                current_keys.append(sub.key)
                current_bytes += current[sub.key].nbytes
                flush()
            del arr
        else:
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
        unit = Unit.parse(key)
        path = unit.param
        if path not in out:
            out[path] = aligned_zeros(param_shapes[path], dtype)
        out[path][unit.index() or ...] = arr.astype(dtype)
        seen.add(key)
        if progress is not None:
            progress(1)
    missing = sorted(set(param_shapes) - set(out))
    if missing:
        raise CheckpointError(f"{directory}: missing parameter {missing[0]!r}")
    return out
