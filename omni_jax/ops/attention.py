"""Dot-product attention with grouped KV heads, boolean masks, and a preallocated KV cache.

Shapes: q [B, Lq, Hq, D], k/v [B, Lk, Hkv, D]; kv head j serves q heads [j*G, (j+1)*G) (HF repeat_kv).
Scores are computed in the activation dtype and the softmax in fp32, cast back (reference notes §2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, scale: float | None = None
              ) -> jax.Array:
    """mask: bool broadcastable to [B, Lq, Lk] (True = may attend); None = full attention."""
    b, lq, hq, d = q.shape
    hkv = k.shape[2]
    g = hq // hkv
    scale = d ** -0.5 if scale is None else scale
    qg = q.reshape(b, lq, hkv, g, d)
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k).astype(jnp.float32) * scale
    if mask is not None:
        s = jnp.where(mask[:, None, None], s, NEG_INF)
    p = jax.nn.softmax(s, axis=-1).astype(q.dtype)
    o = jnp.einsum("bhgqk,bkhd->bqhgd", p, v)
    return o.reshape(b, lq, hq, d)


def causal_mask(q_pos: jax.Array, k_pos: jax.Array, k_valid: jax.Array | None = None) -> jax.Array:
    """q_pos [B, Lq], k_pos [B, Lk] slot indices; True where k_pos <= q_pos (and k_valid)."""
    m = k_pos[:, None, :] <= q_pos[:, :, None]
    if k_valid is not None:
        m = m & k_valid[:, None, :]
    return m


def sliding_causal_mask(length: int, window: int) -> jax.Array:
    """[L, L]: query i sees keys j with i - window < j <= i."""
    i = jnp.arange(length)[:, None]
    j = jnp.arange(length)[None, :]
    return (j <= i) & (j > i - window)


def segment_mask(segment_ids: jax.Array) -> jax.Array:
    """Block-diagonal mask from per-token segment ids [..., L] -> [..., L, L] (bidirectional within a segment)."""
    return segment_ids[..., :, None] == segment_ids[..., None, :]


def cache_write(cache: jax.Array, new: jax.Array, index) -> jax.Array:
    """Write new [B, L, H, D] into cache [B, S, H, D] at slot ``index`` (same for every row)."""
    return jax.lax.dynamic_update_slice_in_dim(cache, new.astype(cache.dtype), index, axis=1)
