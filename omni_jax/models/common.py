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
