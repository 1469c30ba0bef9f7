"""Logits processors in HF's order and semantics (pure functions on fp32 logits [..., V]).

Shared by the token samplers (``omni_jax.generation.sampling``) and the code predictor's in-graph sampling.
Filtered entries become ``-inf``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
    """HF RepetitionPenaltyLogitsProcessor: seen tokens' logits divided (if > 0) or multiplied by the penalty."""
    if penalty == 1.0:
        return logits
    penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalised, logits)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """HF TopKLogitsWarper: keep the k largest (ties with the k-th kept too)."""
    k = min(k, logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """HF TopPLogitsWarper: drop the lowest-probability tokens whose cumulative mass is <= 1 - p (keep >= 1)."""
    order = jnp.argsort(logits, axis=-1)  # ascending, as HF
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove_sorted = (cum <= 1.0 - p).at[..., -1].set(False)  # always keep the most likely token
    remove = jnp.take_along_axis(remove_sorted, jnp.argsort(order, axis=-1), axis=-1)
    return jnp.where(remove, -jnp.inf, logits)


def warp(logits: jax.Array, temperature: float = 1.0, top_k: int | None = None,
         top_p: float | None = None) -> jax.Array:
    """HF's TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper, in fp32."""
    x = logits.astype(jnp.float32)
    if temperature != 1.0:
        x = x / temperature
    if top_k:
        x = top_k_filter(x, top_k)
    if top_p is not None and top_p < 1.0:
        x = top_p_filter(x, top_p)
    return x
