"""Shared helpers for the MoE tests: random MoE params with an O(1)-scale router (top-k free of ties)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def random_moe_params(seed: int, E: int, H: int, I: int, shared: int = 0, router_scale: float = 1.0) -> dict:
    k = jax.random.split(jax.random.PRNGKey(seed), 6)
    p = dict(
        router=router_scale * jax.random.normal(k[0], (H, E), jnp.float32),
        gate_up=jax.random.normal(k[1], (E, H, 2 * I), jnp.float32) / np.sqrt(H),
        down=jax.random.normal(k[2], (E, I, H), jnp.float32) / np.sqrt(I),
    )
    if shared:
        p["shared_gate_up"] = jax.random.normal(k[3], (H, 2 * shared), jnp.float32) / np.sqrt(H)
        p["shared_down"] = jax.random.normal(k[4], (shared, H), jnp.float32) / np.sqrt(shared)
        p["shared_gate"] = jax.random.normal(k[5], (H, 1), jnp.float32)
    return p


def random_tokens(seed: int, T: int, H: int) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(1000 + seed), (T, H), jnp.float32)
