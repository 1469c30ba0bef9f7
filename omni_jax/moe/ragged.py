"""``jax.lax.ragged_dot`` over the expert-sorted assignments (GPU/TPU have grouped-matmul kernels).

On CPU ragged_dot lowers to a dense masked matmul over all groups (~60x slower than the tiles), so
``auto`` never picks it there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from omni_jax.moe.experts import all_expert_weights, combine, swiglu


def sort_by_expert(experts, valid, num_experts):
    """Stable order of the T·K assignments by expert (invalid ones last) and the per-expert group sizes."""
    key = jnp.where(valid, experts, num_experts).reshape(-1)
    order = jnp.argsort(key, stable=True)
    sizes = jnp.zeros((num_experts + 1,), jnp.int32).at[key].add(1)[:num_experts]
    return order, key, sizes


def ragged_moe(x, weights, experts, valid, gate_up, down):
    T, K = experts.shape
    E = gate_up.shape[0]
    order, _, sizes = sort_by_expert(experts, valid, E)
    xs = jnp.take(x, order // K, axis=0)  # [T·K, H]
    h = jax.lax.ragged_dot(xs, all_expert_weights(gate_up, x.dtype), sizes)
    y_sorted = jax.lax.ragged_dot(swiglu(h), all_expert_weights(down, x.dtype), sizes)
    in_a_group = jnp.arange(T * K) < jnp.sum(sizes)  # rows past the groups are unspecified: zero them
    y_sorted = jnp.where(in_a_group[:, None], y_sorted, 0)
    y = jnp.zeros_like(y_sorted).at[order].set(y_sorted).reshape(T, K, -1)
    return combine(y, weights, experts)
