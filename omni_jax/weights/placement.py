"""Restore a converted checkpoint straight onto a device mesh, one storage unit at a time.

Every parameter gets a sharding (``param_shardings``: the MoE expert stacks split over the mesh's ``expert``
axis, everything else replicated). ``read_params_to_devices`` allocates each device's shard on its device,
then streams the Orbax groups: every unit (one layer of a stacked parameter, a block of experts, rows of an
embedding) is cut into the pieces that fall into each device's shard and written there in place. The host
never holds more than one group, so restoring needs no full host copy of the model (or of any parameter);
the arrays are then assembled with ``jax.make_array_from_single_device_arrays``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from omni_jax.sharding import DEFAULT_RULES, ShardingRules
from omni_jax.weights.orbax_io import Unit, iter_units, read_manifest
from omni_jax.weights.safetensors_io import CheckpointError

EXPERT_STACKS = {"gate_up": ("layers", "experts", "embed", None), "down": ("layers", "experts", None, "embed")}


def param_shardings(param_shapes: dict[str, tuple[int, ...]], mesh: Mesh,
                    rules: ShardingRules = DEFAULT_RULES) -> dict[str, NamedSharding]:
    """Expert stacks ``*.mlp.gate_up`` / ``*.mlp.down`` [L, E, ...] over the ``expert`` axis; the rest replicated."""
    out = {}
    for path, shape in param_shapes.items():
        leaf = path.rsplit(".", 1)[-1]
        if path.endswith(f"mlp.{leaf}") and leaf in EXPERT_STACKS and len(shape) == 4:
            spec = rules.spec(mesh, *EXPERT_STACKS[leaf])
            axis = spec[1]
            if axis is not None and shape[1] % mesh.shape[axis]:
                raise CheckpointError(f"{path}: {shape[1]} experts do not split over the mesh's "
                                      f"{axis}={mesh.shape[axis]} devices")
            out[path] = NamedSharding(mesh, spec)
        else:
            out[path] = NamedSharding(mesh, P())
    return out


def _bounds(index: tuple, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """A tuple of ints/slices (a prefix of the dims) -> [start, stop) per dimension."""
    out = []
    for d, n in enumerate(shape):
        ix = index[d] if d < len(index) else slice(None)
        if isinstance(ix, slice):
            start, stop, _ = ix.indices(n)
        else:
            start, stop = int(ix), int(ix) + 1
        out.append((start, stop))
    return out


@functools.partial(jax.jit, donate_argnums=(0,))
def _write(buf, piece, offsets):
    return jax.lax.dynamic_update_slice(buf, piece, offsets)


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
    jdtype = jnp.dtype(dtype)
    shards: dict[str, list[tuple[jax.Device, list[tuple[int, int]]]]] = {}
    buffers: dict[str, dict] = {}
    for path, shape in param_shapes.items():
        index_map = shardings[path].addressable_devices_indices_map(tuple(shape))
        shards[path] = [(dev, _bounds(idx, shape)) for dev, idx in index_map.items()]
        buffers[path] = {dev: jnp.zeros(tuple(b - a for a, b in bounds), jdtype, device=dev)
                         for dev, bounds in shards[path]}
    filled = {path: 0 for path in param_shapes}
    for key, arr in iter_units(directory, manifest):
        unit = Unit.parse(key)
        shape = param_shapes[unit.param]
        region = _bounds(unit.index(), shape)
        full = np.asarray(arr).astype(dtype).reshape(tuple(b - a for a, b in region))
        filled[unit.param] += full.size
        for dev, bounds in shards[unit.param]:
            lo = [max(r[0], s[0]) for r, s in zip(region, bounds)]
            hi = [min(r[1], s[1]) for r, s in zip(region, bounds)]
            if any(a >= b for a, b in zip(lo, hi)):
                continue
            piece = full[tuple(slice(a - r[0], b - r[0]) for a, b, r in zip(lo, hi, region))]
            offsets = tuple(a - s[0] for a, s in zip(lo, bounds))
            buffers[unit.param][dev] = _write(buffers[unit.param][dev], jax.device_put(piece, dev),
                                              jnp.asarray(offsets, jnp.int32))
        if progress is not None:
            progress(1)
    out = {}
    for path, shape in param_shapes.items():
        if filled[path] != int(np.prod(shape)):
            raise CheckpointError(f"{directory}: parameter {path!r} is incomplete in the stored groups")
        out[path] = jax.make_array_from_single_device_arrays(
            tuple(shape), shardings[path], [buffers[path][dev] for dev, _ in shards[path]])
    return out
