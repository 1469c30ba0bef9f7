"""Gather the selected experts' weights (decode): reads only the T·K chosen experts, bandwidth-bound.

A ``lax.map`` over the T·K (token, expert) pairs multiplies each token row by its expert's weights read
with a dynamic index. (Gathering all K experts into one [T, K, H, 2I] tensor first and contracting it with
an einsum copies the weights and was ~6x slower on CPU.) Work grows with T·K whole experts, so ``auto``
uses it only for a handful of tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from omni_jax.moe.experts import combine, expert_weight, swiglu


def gather_moe(x, weights, experts, valid, gate_up, down):
    del valid  # invalid slots have weight 0
    T, K = experts.shape
    rows = jnp.repeat(x, K, axis=0)  # [T·K, H]

    def one(args):
        xr, e = args
        return swiglu(xr[None] @ expert_weight(gate_up, e, x.dtype)) @ expert_weight(down, e, x.dtype)

    y = jax.lax.map(one, (rows, experts.reshape(-1)))  # [T·K, 1, H]
    return combine(y.reshape(T, K, -1), weights, experts)


def gather_selected_moe(x, weights, experts, gate_up_sel, down_sel):
    """``gather_moe`` with each (token, slot)'s expert weights already selected: gate_up_sel [T·K, H, 2I],
    down_sel [T·K, I, H] (row t·K + k is token t's k-th expert). ``experts`` [T, K] only orders the sum."""
    T, K = experts.shape
    rows = jnp.repeat(x, K, axis=0)

    def one(args):
        xr, s = args
        return swiglu(xr[None] @ expert_weight(gate_up_sel, s, x.dtype)) @ expert_weight(down_sel, s, x.dtype)

    y = jax.lax.map(one, (rows, jnp.arange(T * K)))
    return combine(y.reshape(T, K, -1), weights, experts)
