"""Sorted fixed-size tiles per expert (prefill on CPU): static shapes, dropless, no dense fallback.

The T·K assignments are sorted by expert; each expert's run is padded to a multiple of ``tile`` rows, so
every tile belongs to one expert. The number of tiles is static: Σ_e ceil(c_e / tile) ≤ ⌊T·K / tile⌋ +
min(E, T·K), i.e. at most T·K + E·(tile − 1) padded rows. A ``lax.scan`` over tiles multiplies each
[tile, H] block by its expert's weights (read with a dynamic index), skipping tiles past the used ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from omni_jax.moe.experts import combine, expert_weight, swiglu
from omni_jax.moe.ragged import sort_by_expert


def auto_tile_size(num_assignments: int, num_experts: int) -> int:
    """About the mean rows per expert, as a power of two in [8, 128] (big enough for matmul efficiency,
    small enough that per-expert padding stays a fraction of the work)."""
    mean = max(1, -(-num_assignments // num_experts))
    t = 8
    while t < mean and t < 128:
        t *= 2
    return t


def num_tiles(num_assignments: int, num_experts: int, tile: int) -> int:
    return num_assignments // tile + min(num_experts, num_assignments)


def tile_layout(experts, valid, num_experts, tile):
    """Static tile layout: for each assignment its padded row (or R = no row), each row's token, each tile's expert."""
    T, K = experts.shape
    A = T * K
    E = num_experts
    n_tiles = num_tiles(A, E, tile)
    R = n_tiles * tile
    order, key, sizes = sort_by_expert(experts, valid, E)
    tiles_per_expert = -(-sizes // tile)
    tile_end = jnp.cumsum(tiles_per_expert)
    first_tile = tile_end - tiles_per_expert
    group_start = jnp.cumsum(sizes) - sizes
    sorted_key = key[order]
    e_clip = jnp.minimum(sorted_key, E - 1)
    rank = jnp.arange(A) - group_start[e_clip]
    dest_sorted = jnp.where(sorted_key < E, first_tile[e_clip] * tile + rank, R)
    dest = jnp.zeros((A,), jnp.int32).at[order].set(dest_sorted.astype(jnp.int32))  # per assignment
    row_token = jnp.full((R,), T, jnp.int32).at[dest].set(jnp.arange(A, dtype=jnp.int32) // K, mode="drop")
    tile_expert = jnp.minimum(jnp.searchsorted(tile_end, jnp.arange(n_tiles), side="right"), E - 1)
    used_tiles = tile_end[-1]
    return dest, row_token, tile_expert.astype(jnp.int32), used_tiles, n_tiles


def tiles_moe(x, weights, experts, valid, gate_up, down, *, tile: int | None = None):
    T, K = experts.shape
    E, H = gate_up.shape[0], x.shape[-1]
    tile = tile or auto_tile_size(T * K, E)
    dest, row_token, tile_expert, used_tiles, n_tiles = tile_layout(experts, valid, E, tile)
    x_pad = jnp.concatenate([x, jnp.zeros((1, H), x.dtype)], axis=0)
    rows = jnp.take(x_pad, row_token, axis=0).reshape(n_tiles, tile, H)

    def one_tile(carry, inp):
        j, xt, e = inp

        def compute(_):
            return swiglu(xt @ expert_weight(gate_up, e, x.dtype)) @ expert_weight(down, e, x.dtype)

        y = jax.lax.cond(j < used_tiles, compute, lambda _: jnp.zeros((tile, H), x.dtype), None)
        return carry, y

    _, out = jax.lax.scan(one_tile, None, (jnp.arange(n_tiles), rows, tile_expert))
    out = jnp.concatenate([out.reshape(n_tiles * tile, H), jnp.zeros((1, H), x.dtype)], axis=0)
    per_slot = jnp.take(out, dest, axis=0).reshape(T, K, H)
    return combine(per_slot, weights, experts)
