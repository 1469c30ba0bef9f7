"""The complete HF name <-> parameter slot table of a model, and filling / exporting parameter trees with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from omni_jax.weights.rules import Rule
from omni_jax.weights.safetensors_io import CheckpointError


@dataclass(frozen=True)
class Slot:
    rule: Rule
    index: tuple[int, ...]


def param_slice(shape: tuple[int, ...], slot: Slot) -> tuple:
    """Index into the parameter array for this slot (leading indices, then the part of the last axis)."""
    idx: tuple = tuple(slot.index)
    if slot.rule.part is not None:
        k, n = slot.rule.part
        w = shape[-1] // n
        idx = idx + (Ellipsis, slice(k * w, (k + 1) * w))
    return idx


class NameTable:
    """Every HF tensor name of a model (from its modules' rules), its slot, and its expected HF shape."""

    def __init__(self, rules: Iterable[Rule], param_shapes: dict[str, tuple[int, ...]]):
        self.param_shapes = dict(param_shapes)
        self.slots: dict[str, Slot] = {}
        self.rules = list(rules)
        covered = set()
        for rule in self.rules:
            if rule.param not in self.param_shapes:
                raise KeyError(f"rule {rule.hf!r} targets unknown parameter {rule.param!r}")
            covered.add(rule.param)
            for name, idx in rule.names():
                if name in self.slots:
                    raise KeyError(f"HF tensor {name!r} is claimed by two rules")
                self.slots[name] = Slot(rule, idx)
        uncovered = sorted(set(self.param_shapes) - covered)
        if uncovered:
            raise KeyError(f"parameters with no HF tensor mapped to them: {uncovered[:5]}")

    def __len__(self) -> int:
        return len(self.slots)

    def hf_shape(self, name: str) -> tuple[int, ...]:
        slot = self.slots[name]
        shape = self.param_shapes[slot.rule.param]
        dummy = np.broadcast_to(np.zeros((), np.int8), shape)[param_slice(shape, slot)]
        return tuple(slot.rule.to_hf(dummy).shape)

    def names(self) -> list[str]:
        return list(self.slots)


def check_names(table: NameTable, available: Iterable[str], source: str = "checkpoint", strict: bool = True):
    """The checkpoint holds exactly the table's tensors (``strict=False``: extra tensors are allowed)."""
    available = set(available)
    expected = set(table.slots)
    missing = sorted(expected - available)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{source}: missing tensor {missing[0]!r}{more}")
    unexpected = sorted(available - expected)
    if unexpected and strict:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{source}: unexpected tensor {unexpected[0]!r}{more} (no parameter slot for it; "
                              f"does config.json match the weights?)")


HOST_ALIGNMENT = 64  # bytes: XLA:CPU adopts a host array this aligned as a device buffer without copying it


def aligned_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """``np.zeros(shape, dtype)`` whose data starts on a HOST_ALIGNMENT boundary, so ``jax.device_put`` on a CPU
    device uses it in place (a parameter read into it then exists once, not as a host and a device copy)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(nbytes + HOST_ALIGNMENT, np.uint8)
    start = (-raw.ctypes.data) % HOST_ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def fill_params(table: NameTable, read: Callable[[str], np.ndarray], available: Iterable[str], dtype,
                params: dict[str, np.ndarray] | None = None, names: Iterable[str] | None = None,
                source: str = "checkpoint", progress=None, strict: bool = True) -> dict[str, np.ndarray]:
    """Stream tensors ``names`` (default: all) through ``read`` into flat params {path: array}.

    Checks first that the checkpoint holds exactly the expected tensors (missing or unexpected tensors
    fail with their names; ``strict=False`` ignores tensors outside the table, for loading one component),
    then checks each tensor's shape as it is read.
    """
    check_names(table, available, source, strict)
    params = {} if params is None else params
    for name in (table.slots if names is None else names):
        slot = table.slots[name]
        path = slot.rule.param
        shape = table.param_shapes[path]
        if path not in params:
            params[path] = aligned_zeros(shape, dtype)
        tensor = read(name)
        want = table.hf_shape(name)
        if tuple(tensor.shape) != want:
            raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {want}")
        params[path][param_slice(shape, slot)] = slot.rule.to_param(tensor)
        if progress is not None:
            progress(1)
    return params


def export_tensors(table: NameTable, params: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, tensor in HF layout) for every tensor, from flat params {path: array}."""
    for name, slot in table.slots.items():
        arr = np.asarray(params[slot.rule.param])
        yield name, np.ascontiguousarray(slot.rule.to_hf(arr[param_slice(arr.shape, slot)]))


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(flat: dict) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        parts = path.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return tree
