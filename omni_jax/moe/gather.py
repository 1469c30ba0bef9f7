"""Gather the selected experts' weights (decode): reads only the T·K chosen experts, bandwidth-bound.

Work and memory grow with T·K whole experts, so ``auto`` uses it only for a handful of tokens.
"""

from __future__ import annotations

import jax.numpy as jnp

from omni_jax.moe.experts import combine, swiglu


def gather_moe(x, weights, experts, valid, gate_up, down):
    del valid  # invalid slots have weight 0
    wg = jnp.take(gate_up, experts, axis=0).astype(x.dtype)  # [T, K, H, 2I]
    h = jnp.einsum("th,tkhi->tki", x, wg)
    wd = jnp.take(down, experts, axis=0).astype(x.dtype)  # [T, K, I, H]
    y = jnp.einsum("tki,tkih->tkh", swiglu(h), wd)
    return combine(y, weights, experts)
