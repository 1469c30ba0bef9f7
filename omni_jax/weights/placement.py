"""Place a checkpoint straight onto a device mesh: each process reads only the pieces its devices hold.

Every parameter's sharding comes from its declared logical axes (``omni_jax.sharding.flat_shardings``).
Each device's shard is allocated on its device, then filled piece by piece in place:

- a converted (Orbax) directory, one storage unit at a time (one layer of a stacked parameter, a block of
  experts, rows of an embedding), ``read_params_to_devices``;
- a Hugging Face directory, one safetensors tensor at a time, reading from disk only the row block that
  falls into a shard (rows are contiguous in the file; a column range is cut from the rows read),
  ``read_hf_to_devices``.

A piece is read once per distinct shard (replicas over ``data`` share it). The host never holds more than
one unit or one tensor's rows, so loading needs no full host copy of the model, nor of any parameter, and in
a multi-process run each process reads only what its own devices hold. The global arrays are assembled
with ``jax.make_array_from_single_device_arrays``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from omni_jax.weights.mapping import NameTable, Slot, check_names
from omni_jax.weights.orbax_io import Unit, iter_units, read_manifest
from omni_jax.weights.rules import identity, transpose
from omni_jax.weights.safetensors_io import CheckpointError, SafetensorsCheckpoint

Box = tuple[tuple[int, int], ...]  # [start, stop) per dimension


def _bounds(index: tuple, shape: tuple[int, ...]) -> Box:
    """A tuple of ints/slices (a prefix of the dims) -> [start, stop) per dimension."""
    out = []
    for d, n in enumerate(shape):
        ix = index[d] if d < len(index) else slice(None)
        if isinstance(ix, slice):
            start, stop, _ = ix.indices(n)
        else:
            start, stop = int(ix), int(ix) + 1
        out.append((start, stop))
    return tuple(out)


def _intersect(a: Box, b: Box) -> Box | None:
    box = tuple((max(x[0], y[0]), min(x[1], y[1])) for x, y in zip(a, b))
    return None if any(lo >= hi for lo, hi in box) else box


@functools.partial(jax.jit, donate_argnums=(0,))
def _write(buf, piece, offsets):
    return jax.lax.dynamic_update_slice(buf, piece, offsets)


HOST_ASSEMBLY_BYTES = 64 << 20  # shards up to this size are assembled on the host, then put on their devices


class ShardBuffers:
    """Each addressable device's shard of every parameter, filled piece by piece.

    A small shard is assembled on the host and put on its devices once its parameter is complete (one
    transfer, no per-piece dispatch); a large one (an expert stack's) is allocated on its device and each
    piece is written into it in place. Host memory holds at most the small shards of the parameters being
    filled (one at a time when the pieces come parameter by parameter) plus one piece."""

    def __init__(self, param_shapes: dict[str, tuple[int, ...]], dtype, shardings: dict[str, NamedSharding]):
        self.shapes, self.shardings, self.dtype = param_shapes, shardings, jnp.dtype(dtype)
        self.boxes: dict[str, dict[Box, list]] = {}  # path -> distinct shard box -> devices holding it
        self.host: dict[str, dict[Box, np.ndarray]] = {}
        self.device: dict[str, dict] = {}
        self.done: dict[str, list] = {}
        self.filled = {path: 0 for path in param_shapes}
        for path, shape in param_shapes.items():
            boxes: dict[Box, list] = {}
            for dev, idx in shardings[path].addressable_devices_indices_map(tuple(shape)).items():
                boxes.setdefault(_bounds(idx, shape), []).append(dev)
            self.boxes[path] = boxes

    @staticmethod
    def _shape(box: Box) -> tuple[int, ...]:
        return tuple(b - a for a, b in box)

    def _small(self, box: Box) -> bool:
        return int(np.prod(self._shape(box))) * self.dtype.itemsize <= HOST_ASSEMBLY_BYTES

    def pieces(self, path: str, region: Box):
        """(shard box, its intersection with ``region``) for every distinct shard the region touches."""
        for box in self.boxes[path]:
            inter = _intersect(region, box)
            if inter is not None:
                yield box, inter

    def write(self, path: str, box: Box, inter: Box, piece: np.ndarray):
        """Write ``piece`` (the values of ``inter``, in parameter coordinates) into the shard ``box``."""
        piece = np.asarray(piece).astype(self.dtype)
        if self._small(box):
            buf = self.host.setdefault(path, {}).get(box)
            if buf is None:
                buf = self.host[path][box] = np.zeros(self._shape(box), self.dtype)
            buf[tuple(slice(lo - b[0], hi - b[0]) for (lo, hi), b in zip(inter, box))] = piece
            return
        bufs = self.device.setdefault(path, {})
        offsets = jnp.asarray([lo - b[0] for (lo, _), b in zip(inter, box)], jnp.int32)
        for dev in self.boxes[path][box]:
            if dev not in bufs:
                bufs[dev] = jnp.zeros(self._shape(box), self.dtype, device=dev)
            bufs[dev] = _write(bufs[dev], jax.device_put(piece, dev), offsets)

    def count(self, path: str, region: Box):
        """Record that ``region`` of the parameter was written; a complete parameter is assembled."""
        self.filled[path] += int(np.prod([b - a for a, b in region]))
        if self.filled[path] == int(np.prod(self.shapes[path])):
            self._finish(path)

    def _finish(self, path: str):
        host, bufs = self.host.pop(path, {}), self.device.pop(path, {})
        shards = []
        for box, devs in self.boxes[path].items():
            for dev in devs:
                if box in host:
                    shards.append(jax.device_put(host[box], dev))
                elif dev in bufs:
                    shards.append(bufs[dev])
                else:  # a shard no piece touched cannot occur in a complete parameter
                    raise AssertionError(f"{path}: shard {box} was never written")
        self.done[path] = jax.make_array_from_single_device_arrays(tuple(self.shapes[path]), self.shardings[path],
                                                                   shards)

    def assemble(self, source: str) -> dict[str, jax.Array]:
        for path, shape in self.shapes.items():
            if path not in self.done:
                raise CheckpointError(f"{source}: parameter {path!r} is incomplete")
        return dict(self.done)


def read_params_to_devices(directory: Path, param_shapes: dict[str, tuple[int, ...]], dtype,
                           shardings: dict[str, NamedSharding],
                           progress: Callable[[int], None] | None = None) -> dict[str, jax.Array]:
    """Flat {path: global jax.Array placed with ``shardings[path]``} from a converted checkpoint."""
    manifest = read_manifest(directory)
    stored = {p: tuple(s) for p, s in manifest["params"].items()}
    for path, shape in param_shapes.items():
        if stored.get(path) != tuple(shape):
            what = "missing parameter" if path not in stored else f"parameter with shape {stored[path]}, expected"
            raise CheckpointError(f"{directory}: {what} {path!r}" + ("" if path not in stored else f" {tuple(shape)}"))
    extra = sorted(set(stored) - set(param_shapes))
    if extra:
        raise CheckpointError(f"{directory}: unexpected parameter {extra[0]!r} (does config.json match?)")
    bufs = ShardBuffers(param_shapes, dtype, shardings)
    for key, arr in iter_units(directory, manifest):
        unit = Unit.parse(key)
        region = _bounds(unit.index(), param_shapes[unit.param])
        full = np.asarray(arr).reshape(tuple(b - a for a, b in region))
        for box, inter in bufs.pieces(unit.param, region):
            piece = full[tuple(slice(a - r[0], b - r[0]) for (a, b), r in zip(inter, region))]
            bufs.write(unit.param, box, inter, piece)
        bufs.count(unit.param, region)
        if progress is not None:
            progress(1)
    return bufs.assemble(str(directory))


def slot_region(shape: tuple[int, ...], slot: Slot) -> Box:
    """Where an HF tensor's slot sits in its parameter (leading slot indices, then the part of the last axis)."""
    lead = len(slot.index)
    region = [(i, i + 1) for i in slot.index] + [(0, n) for n in shape[lead:]]
    if slot.rule.part is not None:
        k, n = slot.rule.part
        w = shape[-1] // n
        region[-1] = (k * w, (k + 1) * w)
    return tuple(region)


def _read_slot_piece(ck: SafetensorsCheckpoint, name: str, slot: Slot, rel: Box) -> np.ndarray:
    """The block ``rel`` of the slot's tensor in parameter layout (``to_param(hf_tensor)``), reading only the
    HF rows it needs when the layout is the HF one or its transpose."""
    to_param = slot.rule.to_param
    if to_param is identity and rel:
        rows = ck.read_rows(name, *rel[0])
        return rows[(slice(None),) + tuple(slice(a, b) for a, b in rel[1:])]
    if to_param is transpose and len(rel) == 2:  # HF [out, in] -> [in, out]: HF rows are our columns
        rows = ck.read_rows(name, *rel[1])
        return transpose(rows[:, rel[0][0]:rel[0][1]])
    full = slot.rule.to_param(ck.read(name))
    return full[tuple(slice(a, b) for a, b in rel)]


def read_hf_to_devices(ck: SafetensorsCheckpoint, table: NameTable, dtype, shardings: dict[str, NamedSharding],
                       source: str = "checkpoint",
                       progress: Callable[[int], None] | None = None) -> dict[str, jax.Array]:
    """Flat {path: global jax.Array placed with ``shardings[path]``} from an HF safetensors directory.

    Every name and shape is checked from the shard headers before anything is allocated or read."""
    check_names(table, ck.names(), source)
    for name in table.slots:
        want, got = table.hf_shape(name), ck.tensors[name].shape
        if tuple(got) != want:
            raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(got)}, expected {want}")
    bufs = ShardBuffers(table.param_shapes, dtype, shardings)
    by_param: dict[str, list[tuple[str, Slot]]] = {}
    for name, slot in table.slots.items():  # parameter by parameter: one parameter's host shards at a time
        by_param.setdefault(slot.rule.param, []).append((name, slot))
    for name, slot in (item for items in by_param.values() for item in items):
        path = slot.rule.param
        region = slot_region(table.param_shapes[path], slot)
        lead = len(slot.index)
        for box, inter in bufs.pieces(path, region):
            rel = tuple((a - r[0], b - r[0]) for (a, b), r in zip(inter[lead:], region[lead:]))
            piece = _read_slot_piece(ck, name, slot, rel)
            bufs.write(path, box, inter, piece.reshape(tuple(b - a for a, b in inter)))
        bufs.count(path, region)
        if progress is not None:
            progress(1)
    return bufs.assemble(source)
