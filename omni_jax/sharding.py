"""Mesh construction and the logical-axis → mesh-axis rules, in one place.

Mesh axes: ``data`` (batch / tokens), ``expert`` (MoE experts), ``model`` (tensor parallel, heads / MLP
width). A mesh is described by a spec string such as ``"data=2,expert=4"``; axes not named have size 1 and
are left out of the mesh, and every rule that points at an absent axis simply means "replicated".
Multi-host runs (``jax.distributed``) use the same code: the mesh is built over ``jax.devices()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from omni_jax.errors import UsageError

MESH_AXES = ("data", "expert", "model")


class MeshSpecError(UsageError):
    """A mesh spec string that cannot be parsed or does not fit the devices."""


def parse_mesh_spec(spec: str | Mapping[str, int]) -> dict[str, int]:
    """``"data=1,expert=8"`` → {"data": 1, "expert": 8} (order kept; axes must be among MESH_AXES)."""
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, size = part.partition("=")
            if not sep or not size.strip().isdigit():
                raise MeshSpecError(f"mesh spec {spec!r}: expected name=size pairs like 'data=1,expert=8'")
            items.append((name.strip(), int(size)))
    out: dict[str, int] = {}
    for name, size in items:
        if name not in MESH_AXES:
            raise MeshSpecError(f"mesh spec {spec!r}: unknown axis {name!r} (axes: {', '.join(MESH_AXES)})")
        if name in out:
            raise MeshSpecError(f"mesh spec {spec!r}: axis {name!r} given twice")
        if size < 1:
            raise MeshSpecError(f"mesh spec {spec!r}: axis {name!r} has size {size}")
        out[name] = int(size)
    if not out:
        raise MeshSpecError(f"mesh spec {spec!r} names no axis")
    return out


def make_mesh(spec: str | Mapping[str, int], devices=None) -> Mesh:
    """A Mesh with the named axes (in the spec's order) over the first prod(sizes) devices."""
    sizes = parse_mesh_spec(spec)
    devices = list(jax.devices() if devices is None else devices)
    n = math.prod(sizes.values())
    if n > len(devices):
        raise MeshSpecError(f"mesh spec {dict(sizes)} needs {n} devices, {len(devices)} available")
    grid = np.array(devices[:n], dtype=object).reshape(tuple(sizes.values()))
    return Mesh(grid, tuple(sizes))


@dataclass(frozen=True)
class ShardingRules:
    """Logical axis name → mesh axis (or tuple of mesh axes, or None = replicated)."""

    batch: str | tuple[str, ...] | None = "data"
    tokens: str | tuple[str, ...] | None = ("data", "expert")  # flattened tokens in the all_to_all MoE path
    experts: str | None = "expert"
    heads: str | None = "model"
    kv_heads: str | None = "model"
    mlp: str | None = "model"
    vocab: str | None = "model"
    embed: str | None = None
    layers: str | None = None

    def mesh_axes(self, logical: str | None, mesh: Mesh):
        if logical is None:
            return None
        target = getattr(self, logical)
        if target is None:
            return None
        names = (target,) if isinstance(target, str) else tuple(target)
        present = tuple(a for a in names if a in mesh.axis_names and mesh.shape[a] > 1)
        if not present:
            return None
        return present[0] if len(present) == 1 else present

    def spec(self, mesh: Mesh, *logical: str | None) -> P:
        """PartitionSpec for an array whose dimensions have these logical names (None = not sharded)."""
        return P(*(self.mesh_axes(name, mesh) for name in logical))

    def sharding(self, mesh: Mesh, *logical: str | None) -> NamedSharding:
        return NamedSharding(mesh, self.spec(mesh, *logical))


DEFAULT_RULES = ShardingRules()

# Logical axes of the MoE block's parameters (an extra leading "layers" axis when stacked).
MOE_LOGICAL_AXES = {
    "router": ("embed", None),
    "gate_up": ("experts", "embed", None),
    "down": ("experts", None, "embed"),
    "shared_gate_up": ("embed", None),
    "shared_down": (None, "embed"),
    "shared_gate": ("embed", None),
}


def moe_param_specs(params: Mapping, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> dict:
    """PartitionSpecs for a MoE param dict (stacked on a leading layer axis when ndim is one more)."""
    out = {}
    for name, arr in params.items():
        logical = MOE_LOGICAL_AXES[name]
        if arr.ndim == len(logical) + 1:
            logical = ("layers",) + logical
        elif arr.ndim != len(logical):
            raise ValueError(f"MoE param {name!r} has shape {arr.shape}; expected {len(logical)} (+1 stacked) dims")
        out[name] = rules.spec(mesh, *logical)
    return out


def shard_moe_params(params: Mapping, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> dict:
    """device_put the MoE params so each device holds only its E / n_expert experts."""
    specs = moe_param_specs(params, mesh, rules)
    return {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in params.items()}
