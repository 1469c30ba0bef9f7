"""Parameter constructors shared by the model modules.

Conventions (every module follows them, so weights, sharding and surgery work generically):
- Linear weights are [in, out]; stacked layers add a leading [num_layers] axis; experts add [num_experts]
  after it. Fused SwiGLU weights are ``gate_up`` [.., H, 2I] (gate = first I columns) and ``down`` [.., I, H].
- Parameters live in ``nnx.Param``; the maths reads ``nnx.to_pure_dict(nnx.state(module, nnx.Param))``,
  a plain nested dict of arrays with the same structure, and passes it to pure functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def normal(rngs: nnx.Rngs, *shape: int, dtype=jnp.float32, std: float = 0.02) -> nnx.Param:
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, dtype))


def ones(*shape: int, dtype=jnp.float32) -> nnx.Param:
    return nnx.Param(jnp.ones(shape, dtype))


def zeros(*shape: int, dtype=jnp.float32) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, dtype))


def full(value: float, *shape: int, dtype=jnp.float32) -> nnx.Param:
    return nnx.Param(jnp.full(shape, value, dtype))


def pure_params(module: nnx.Module) -> dict:
    """The module's parameters as a plain nested dict of arrays (what the pure functions take)."""
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def stack_views(stacks: dict) -> tuple[dict, ...] | None:
    """Each layer of the stacked weights in ``stacks`` ([num_layers, ...] leaves) as its own array that *aliases*
    the stack's memory (no copy), or None where that is not possible.

    XLA:CPU copies a slice of a stacked weight before every dot that reads it (docs/performance.md); a weight
    that is its own argument is read in place. On a single CPU device a jax array is host memory: a numpy view
    of one layer, put back on the device, shares that memory. Only when every view is verified to alias (a
    single CPU device, aligned layer offsets) are the views returned, so this never duplicates a weight. Call
    it outside jit; the views are only valid while the stacks are alive and unmodified (never donate them).
    """
    leaves = jax.tree.leaves(stacks)
    if not leaves or not all(isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer) for a in leaves):
        return None
    devices = {d for a in leaves for d in a.devices()}
    if len(devices) != 1 or next(iter(devices)).platform != "cpu":
        return None
    device = next(iter(devices))
    host = jax.tree.map(np.asarray, stacks)
    views = []
    for i in range(leaves[0].shape[0]):
        layer = jax.tree.map(lambda h: jax.device_put(h[i], device), host)
        pairs = zip(jax.tree.leaves(layer), jax.tree.leaves(host))
        if not all(v.unsafe_buffer_pointer() == h[i].ctypes.data for v, h in pairs):
            return None
        views.append(layer)
    return tuple(views)
