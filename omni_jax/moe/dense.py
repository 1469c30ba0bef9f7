"""Dense all-experts oracle: every token through every expert, then weighted by the (scattered) routing.

O(T · E) work and a [T, E, H] intermediate: for tests only, never picked by ``auto``.
"""

from __future__ import annotations

import jax.numpy as jnp

from omni_jax.moe.experts import all_expert_weights, swiglu


def dense_moe(x, weights, experts, valid, gate_up, down):
    T, K = experts.shape
    E = gate_up.shape[0]
    h = jnp.einsum("th,ehi->tei", x, all_expert_weights(gate_up, x.dtype))
    y = jnp.einsum("tei,eih->teh", swiglu(h), all_expert_weights(down, x.dtype))
    w = jnp.where(valid, weights, 0).astype(jnp.float32)
    dense_w = jnp.zeros((T, E), jnp.float32).at[jnp.arange(T)[:, None], experts].add(w)
    return jnp.einsum("teh,te->th", y.astype(jnp.float32), dense_w).astype(x.dtype)
