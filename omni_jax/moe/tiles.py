"""Sorted fixed-size tiles per expert (prefill on CPU): static shapes, dropless, no dense fallback.

The T·K assignments are sorted by expert; each expert's run is padded to a multiple of ``tile`` rows, so
every tile belongs to one expert. The number of tiles is static: Σ_e ceil(c_e / tile) ≤ ⌊T·K / tile⌋ +
min(E, T·K), i.e. at most T·K + E·(tile − 1) padded rows.

The loop runs over the experts that have rows (a ``fori_loop`` with a traced count), and inside it over that
expert's tiles: each used expert's weights are read out of the stack once and serve all its tiles. (XLA:CPU
copies a dynamically indexed weight before the dot; looping over tiles and indexing the expert per tile copied
an expert's weights once per tile, ~2x the weight traffic of a 512-token prefill.) Tiles past the used ones
stay zero. The loops have traced trip counts, which reverse-mode autodiff cannot go through, so gradients
are taken through the same computation written as a fixed-length scan over tiles (``custom_vjp``).
"""

from __future__ import annotations

import functools

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
    tile_expert = jnp.minimum(jnp.searchsorted(tile_end, jnp.arange(n_tiles), side="right", method="compare_all"), E - 1)
    used_tiles = tile_end[-1]
    return dest, row_token, tile_expert.astype(jnp.int32), used_tiles, n_tiles


def expert_tile_ranges(tile_expert, used_tiles, num_experts):
    """[first, end) tile indices of each expert's run (empty when the expert has no rows)."""
    n_tiles = tile_expert.shape[0]
    owner = jnp.where(jnp.arange(n_tiles) < used_tiles, tile_expert, num_experts)  # unused tiles: nobody's
    e = jnp.arange(num_experts)
    return (jnp.searchsorted(owner, e, side="left", method="compare_all"),
            jnp.searchsorted(owner, e, side="right", method="compare_all"))


def tiles_moe(x, weights, experts, valid, gate_up, down, *, tile: int | None = None):
    T, K = experts.shape
    tile = tile or auto_tile_size(T * K, gate_up.shape[0])
    return _tiles_moe(x, weights, experts, valid, gate_up, down, tile)


def _tile_rows(x, experts, valid, num_experts, tile):
    dest, row_token, tile_expert, used_tiles, n_tiles = tile_layout(experts, valid, num_experts, tile)
    x_pad = jnp.concatenate([x, jnp.zeros((1, x.shape[-1]), x.dtype)], axis=0)
    rows = jnp.take(x_pad, row_token, axis=0).reshape(n_tiles, tile, x.shape[-1])
    return dest, rows, tile_expert, used_tiles


def _combine_tiles(out, dest, weights, experts):
    T, K = experts.shape
    H = out.shape[-1]
    out = jnp.concatenate([out.reshape(-1, H), jnp.zeros((1, H), out.dtype)], axis=0)
    per_slot = jnp.take(out, dest, axis=0).reshape(T, K, H)
    return combine(per_slot, weights, experts)


def _by_expert(x, weights, experts, valid, gate_up, down, tile):
    """Loop over the used experts, then over each one's tiles (one weight read per used expert)."""
    T, K = experts.shape
    E = gate_up.shape[0]
    dest, rows, tile_expert, used_tiles = _tile_rows(x, experts, valid, E, tile)
    first, end = expert_tile_ranges(tile_expert, used_tiles, E)
    has_rows = end > first
    active = jnp.nonzero(has_rows, size=min(E, T * K), fill_value=0)[0]

    def one_expert(u, out):
        e = active[u]
        w_gate_up, w_down = expert_weight(gate_up, e, x.dtype), expert_weight(down, e, x.dtype)

        def one_tile(j, out):
            xt = jax.lax.dynamic_index_in_dim(rows, j, 0, keepdims=False)
            y = swiglu(xt @ w_gate_up) @ w_down
            return jax.lax.dynamic_update_index_in_dim(out, y, j, 0)

        return jax.lax.fori_loop(first[e], end[e], one_tile, out)

    out = jax.lax.fori_loop(0, jnp.sum(has_rows), one_expert, jnp.zeros(rows.shape, x.dtype))
    return _combine_tiles(out, dest, weights, experts)


def _by_tile(x, weights, experts, valid, gate_up, down, tile):
    """The same result as a fixed-length scan over tiles (reverse-differentiable): the gradient path."""
    dest, rows, tile_expert, used_tiles = _tile_rows(x, experts, valid, gate_up.shape[0], tile)
    tile_shape = rows.shape[1:]

    def one_tile(carry, inp):
        j, xt, e = inp

        def compute(_):
            return swiglu(xt @ expert_weight(gate_up, e, x.dtype)) @ expert_weight(down, e, x.dtype)

        return carry, jax.lax.cond(j < used_tiles, compute, lambda _: jnp.zeros(tile_shape, x.dtype), None)

    _, out = jax.lax.scan(one_tile, None, (jnp.arange(rows.shape[0]), rows, tile_expert))
    return _combine_tiles(out, dest, weights, experts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _tiles_moe(x, weights, experts, valid, gate_up, down, tile):
    return _by_expert(x, weights, experts, valid, gate_up, down, tile)


def _tiles_moe_fwd(x, weights, experts, valid, gate_up, down, tile):
    return _by_expert(x, weights, experts, valid, gate_up, down, tile), (x, weights, experts, valid, gate_up, down)


def _tiles_moe_bwd(tile, res, g):
    x, weights, experts, valid, gate_up, down = res
    _, vjp = jax.vjp(lambda x, w, gu, dn: _by_tile(x, w, experts, valid, gu, dn, tile), x, weights, gate_up, down)
    dx, dw, dgu, ddn = vjp(g)
    return dx, dw, None, None, dgu, ddn


_tiles_moe.defvjp(_tiles_moe_fwd, _tiles_moe_bwd)
