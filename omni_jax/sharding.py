"""Mesh axes, mesh specs and THE logical-axis → mesh-axis rules table.

Conventions:
- Mesh axes: ``data`` (batch: replicas of the weights), ``fsdp`` (weights split FSDP-style), ``tensor``
  (heads / MLP width / vocabulary), ``expert`` (MoE experts). A spec string such as ``"fsdp=2,expert=4"``
  names some of them; absent axes have size 1. Every mesh built here has all four axes, in the device-grid
  order data (outermost), fsdp, expert, tensor (innermost: the fastest links).
- Logical axes are what a parameter's dimensions mean; every ``nnx.Param`` declares them where it is created
  (``omni_jax.models.common``), e.g. ``("layers", "experts", "embed", "mlp")``. ``RULES`` below maps each
  logical axis to mesh axes. As in MaxText, the FSDP-style axes (``embed``, ``channels``) take every
  weight-sharding mesh axis the array does not already use, so ``expert`` and ``tensor`` also split the
  weights that have no experts or heads: on a mesh whose axes all shard weights each device holds ~1/N.
- A mesh axis is used at most once per array. Dedicated axes (experts, heads, kv heads, mlp, vocab) are
  assigned before the FSDP-style ones. A strict rule must divide the dimension it shards (else a
  ``ShardingError`` naming the weight and dimension); a lenient rule uses only the mesh axes that divide it
  (vocoder / audio-stem channels that shrink to 96, the KV cache's batch and kv heads).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from omni_jax.errors import UsageError

MESH_AXES = ("data", "fsdp", "expert", "tensor")  # device-grid order
WEIGHT_MESH_AXES = ("fsdp", "expert", "tensor")  # the axes that split weights (data replicates them)

Axes = tuple  # a tuple of logical axis names (or None) per dimension


class MeshSpecError(UsageError):
    """A mesh spec string that cannot be parsed or does not fit the devices."""


class ShardingError(UsageError):
    """A mesh whose axis sizes do not divide a dimension they shard."""


@dataclass(frozen=True)
class Rule:
    """Mesh axes for one logical axis, in the order they are tried."""

    mesh_axes: tuple[str, ...]
    fsdp_style: bool = False  # assigned after the dedicated axes, from what the array leaves unused
    strict: bool = True  # must divide the dimension (else ShardingError); lenient: uses the axes that divide


RULES: dict[str, Rule] = {
    # weights
    "layers": Rule(()),  # the scanned layer stack: never split
    "experts": Rule(("expert",)),
    "heads": Rule(("tensor",)),  # q heads x head_dim (flattened)
    "kv_heads": Rule(("tensor",)),
    "mlp": Rule(("tensor",)),  # MLP / expert hidden width
    # vocabulary / codebook / table rows: over every weight axis, so the logits are computed where the head's
    # columns live (all-gathering a [2048, 152064] lm_head for each prefill costs 1.2 GB of f32 temporaries)
    "vocab": Rule(("tensor", "fsdp", "expert")),
    "embed": Rule(("fsdp", "expert", "tensor"), fsdp_style=True),  # model width
    "channels": Rule(("fsdp", "expert", "tensor"), fsdp_style=True, strict=False),  # small conv channels
    "norm": Rule(()),  # norm weights, biases and scales over the model width: replicated
    # activations and caches
    "batch": Rule(("data", "fsdp"), strict=False),
    "cache_kv_heads": Rule(("tensor",), strict=False),
}


def parse_mesh_spec(spec: str | Mapping[str, int]) -> dict[str, int]:
    """``"fsdp=2,expert=4"`` → {"fsdp": 2, "expert": 4} (order kept; axes must be among MESH_AXES)."""
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, size = part.partition("=")
            if not sep or not size.strip().isdigit():
                raise MeshSpecError(f"mesh spec {spec!r}: expected name=size pairs like 'fsdp=2,expert=4'")
            items.append((name.strip(), int(size)))
    out: dict[str, int] = {}
    for name, size in items:
        if name not in MESH_AXES:
            raise MeshSpecError(f"mesh spec {spec!r}: unknown axis {name!r} (axes: {', '.join(MESH_AXES)})")
        if name in out:
            raise MeshSpecError(f"mesh spec {spec!r}: axis {name!r} given twice")
        if int(size) < 1:
            raise MeshSpecError(f"mesh spec {spec!r}: axis {name!r} has size {size}")
        out[name] = int(size)
    if not out:
        raise MeshSpecError(f"mesh spec {spec!r} names no axis")
    return out


def mesh_sizes(spec: str | Mapping[str, int]) -> dict[str, int]:
    """All four axis sizes (absent axes 1), in device-grid order."""
    named = parse_mesh_spec(spec)
    return {a: named.get(a, 1) for a in MESH_AXES}


def make_mesh(spec: str | Mapping[str, int] | Mesh, devices: Sequence | None = None) -> Mesh:
    """A Mesh with all four axes (absent ones size 1) over the first prod(sizes) devices (``jax.devices()``:
    every process's devices in a multi-process run). A Mesh passes through unchanged."""
    if isinstance(spec, Mesh):
        return spec
    sizes = mesh_sizes(spec)
    devices = list(jax.devices() if devices is None else devices)
    n = math.prod(sizes.values())
    if n > len(devices):
        raise MeshSpecError(f"mesh spec {spec!r} needs {n} devices, {len(devices)} available")
    shape = tuple(sizes.values())
    types = (jax.sharding.AxisType.Auto,) * len(shape)
    if n == len(devices) and devices[0].platform != "cpu":
        try:  # the physical topology (TPU torus / GPU hosts) decides which devices are neighbours
            return jax.make_mesh(shape, MESH_AXES, axis_types=types, devices=devices)
        except (ValueError, NotImplementedError, AssertionError):
            pass
    return Mesh(np.array(devices[:n], dtype=object).reshape(shape), MESH_AXES, axis_types=types)


def abstract_mesh(spec: str | Mapping[str, int]):
    """The mesh's shape without devices (to check a spec against a model before any device is needed)."""
    sizes = mesh_sizes(spec)
    return jax.sharding.AbstractMesh(tuple(sizes.values()), tuple(sizes),
                                     axis_types=(jax.sharding.AxisType.Auto,) * len(sizes))


def check_fits(info: Mapping[str, tuple[tuple[int, ...], Axes]], spec: str | Mapping[str, int]) -> None:
    """Raise ``ShardingError`` (naming the weight and dimension) if the spec cannot split these arrays."""
    mesh = abstract_mesh(spec)
    for path, (shape, axes) in sorted(info.items(), key=lambda kv: -math.prod(kv[1][0])):  # the largest first
        logical_spec(axes, shape, mesh, name=path)


def mesh_spec_string(mesh) -> str:
    """``"fsdp=2,expert=4"`` for a mesh (axes of size 1 left out; ``"data=1"`` for a single device)."""
    parts = [f"{a}={mesh.shape[a]}" for a in mesh.axis_names if mesh.shape[a] > 1]
    return ",".join(parts) or "data=1"


def axis_size(mesh, name: str) -> int:
    return int(mesh.shape[name]) if mesh is not None and name in mesh.axis_names else 1


def weight_devices(mesh) -> int:
    """How many ways the weights are split (the product of the weight-sharding axes)."""
    return math.prod(axis_size(mesh, a) for a in WEIGHT_MESH_AXES)


def _where(name: str, shape, dim: int, logical: str) -> str:
    return f"{name}: dimension {dim} ({logical}, size {shape[dim]} of shape {tuple(shape)})"


def logical_spec(axes: Axes, shape: Sequence[int], mesh, *, name: str = "array") -> P:
    """The PartitionSpec of an array with these logical axes on ``mesh`` (a Mesh or AbstractMesh).

    Mesh axes of size 1 (or absent) are left out; each mesh axis is used at most once; dedicated axes are
    assigned before the FSDP-style ones. Raises ``ShardingError`` where a strict rule does not divide."""
    if len(axes) != len(shape):
        raise ValueError(f"{name}: {len(axes)} logical axes {axes} for shape {tuple(shape)}")
    used: set[str] = set()
    out: list = [None] * len(shape)
    order = sorted(range(len(axes)), key=lambda d: axes[d] in RULES and RULES[axes[d]].fsdp_style)
    for d in order:
        logical = axes[d]
        if logical is None:
            continue
        if logical not in RULES:
            raise ValueError(f"{name}: unknown logical axis {logical!r}")
        rule = RULES[logical]
        chosen: list[str] = []
        prod = 1
        for m in rule.mesh_axes:
            size = axis_size(mesh, m)
            if size == 1 or m in used:
                continue
            if shape[d] % (prod * size):
                if rule.strict:
                    split = "x".join(f"{a}={axis_size(mesh, a)}" for a in chosen + [m])
                    raise ShardingError(f"{_where(name, shape, d, logical)} does not split over {split}")
                continue
            chosen.append(m)
            prod *= size
        used.update(chosen)
        out[d] = None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen)
    return P(*out)


def logical_sharding(axes: Axes, shape: Sequence[int], mesh: Mesh, *, name: str = "array") -> NamedSharding:
    return NamedSharding(mesh, logical_spec(axes, shape, mesh, name=name))


def flat_shardings(info: Mapping[str, tuple[tuple[int, ...], Axes]], mesh: Mesh) -> dict[str, NamedSharding]:
    """{path: NamedSharding} for {path: (shape, logical axes)}; every divisibility problem is checked here."""
    return {path: logical_sharding(axes, shape, mesh, name=path) for path, (shape, axes) in info.items()}


def per_device_bytes(info: Mapping[str, tuple[tuple[int, ...], Axes]], mesh, itemsize: int) -> int:
    """Bytes of these arrays one device holds on ``mesh`` (the largest shard of each)."""
    total = 0
    for path, (shape, axes) in info.items():
        spec = logical_spec(axes, shape, mesh, name=path)
        n = 1
        for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
            names = () if entry is None else (entry,) if isinstance(entry, str) else entry
            n *= -(-dim // math.prod(axis_size(mesh, a) for a in names))
        total += n * itemsize
    return total


# Logical axes of a decoder KV cache [layers, batch, slots, kv_heads, head_dim].
KV_CACHE_AXES: Axes = ("layers", "batch", None, "cache_kv_heads", None)


def context_mesh():
    """The mesh set with ``jax.set_mesh`` (an AbstractMesh; inside or outside jit), or None."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "spec"))
def _sharded_zeros(shape, dtype, spec):
    return jax.lax.with_sharding_constraint(jnp.zeros(shape, dtype), spec)


def zeros(shape: tuple[int, ...], dtype, axes: Axes):
    """Zeros laid out by ``axes`` on the context mesh, created in place on each device (inside or outside
    jit: never built whole on one device first); plain zeros without a mesh."""
    mesh = context_mesh()
    if mesh is None:
        return jnp.zeros(shape, dtype)
    return _sharded_zeros(tuple(shape), jnp.dtype(dtype), logical_spec(axes, shape, mesh))


def replicated(tree):
    """Inside jit on a context mesh: every array of the tree replicated over the mesh (the small values the host
    reads or feeds back into the next step: each step then sees the same layouts, and every process can read
    them). Without a mesh: unchanged."""
    mesh = context_mesh()
    if mesh is None:
        return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, P()), tree)


def constrain_cache(cache):
    """Inside jit on a context mesh: a decoder KV cache kept in the layout ``zeros`` created it with."""
    mesh = context_mesh()
    if mesh is None:
        return cache

    def fix(x, axes):
        return jax.lax.with_sharding_constraint(x, logical_spec(axes, x.shape, mesh))

    return type(cache)(fix(cache.k, KV_CACHE_AXES), fix(cache.v, KV_CACHE_AXES), fix(cache.valid, ("batch", None)),
                       fix(cache.length, ()))


def on_mesh(tree):
    """Host values (or device arrays) as arrays replicated over the context mesh, outside jit: committed, so a
    jitted step sees the same input layout at every call (in a multi-process run every process passes the
    same value). Without a mesh: ``jnp.asarray``."""
    mesh = jax.sharding.get_mesh()
    if mesh.empty:
        return jax.tree.map(jnp.asarray, tree)
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def to_host(x) -> np.ndarray:
    """A (device) array's whole value on this process. On a mesh spanning processes an array split across them
    is all-gathered (every process calls this at the same point, so every process gets the same value)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
