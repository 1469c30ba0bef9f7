"""Dot-product attention (grouped KV heads, boolean masks): the one attention core every model calls.

Shapes: q [B, Lq, Hq, D], k/v [B, Lk, Hkv, D]; kv head j serves q heads [j*G, (j+1)*G) (HF repeat_kv).
The reference rounds at different points in different modules; those points are parameters here, so each
model states its own and the maths stays in one place (in float32 every choice gives the same result):

- ``float32_dots``: both products accumulate in fp32 and are rounded once to the activation dtype (torch's
  bf16 matmul on CPU, as the audio encoder's eager attention runs); otherwise the dots are XLA's in the
  activation dtype.
- ``scale_in_float32``: the scores are cast to fp32 and then scaled (the text decoders); otherwise they are
  scaled in the activation dtype first, as HF's eager ``matmul(q, k^T) * scaling`` (code predictor, Code2Wav,
  vision, audio).

The softmax is always fp32 and its probabilities are rounded to the activation dtype before the product with
v. Masked scores get the most negative fp32 value: a row with no visible key (a padding query) comes out
finite (uniform weights) instead of NaN, so padding never poisons the real rows through 0 * NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange

from omni_jax.kernels.attention import decode_attention, decode_attention_usable

NEG_INF = float(jnp.finfo(jnp.float32).min)


QUERY_CHUNK = 64  # query positions per step when a long query is split (scores of one step stay in cache)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None, *,
              scale: float | None = None, scale_in_float32: bool = False, float32_dots: bool = False
              ) -> jax.Array:
    """mask: bool broadcastable to [B, Lq, Lk] (True = may attend); None = full attention.
    scale: default head_dim ** -0.5. Returns [B, Lq, Hq, D] in q's dtype.

    Queries longer than ``QUERY_CHUNK`` positions go through ``lax.map`` in chunks of that many (padded to a
    multiple): each chunk's [.., chunk * G, Lk] scores stay in cache between the two products and the softmax
    instead of going to memory (Thinker prefill at real width, 512 tokens: 48 -> 28 ms). Rows are independent,
    so every row's sums are the same as unchunked."""
    kw = dict(scale=scale, scale_in_float32=scale_in_float32, float32_dots=float32_dots)
    lq = q.shape[1]
    if lq <= QUERY_CHUNK:
        return _attention_rows(q, k, v, mask, **kw)
    n = -(-lq // QUERY_CHUNK)
    pad = n * QUERY_CHUNK - lq
    qs = rearrange(jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))), "b (n c) h d -> n b c h d", n=n)
    if mask is None or mask.shape[1] == 1:  # the same mask for every query row
        out = jax.lax.map(lambda qc: _attention_rows(qc, k, v, mask, **kw), qs)
    else:
        ms = jnp.pad(mask, ((0, 0), (0, pad), (0, 0)))  # padded rows see nothing: uniform weights, cut below
        ms = rearrange(ms, "b (n c) k -> n b c k", n=n)
        out = jax.lax.map(lambda a: _attention_rows(a[0], k, v, a[1], **kw), (qs, ms))
    return rearrange(out, "n b c h d -> b (n c) h d")[:, :lq]


def _attention_rows(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, *, scale: float | None,
                    scale_in_float32: bool, float32_dots: bool) -> jax.Array:
    """``attention`` for one block of query rows, in one pass."""
    b, lq, hq, d = q.shape
    hkv = k.shape[2]
    dtype = q.dtype
    scale = d ** -0.5 if scale is None else scale
    g, lk = hq // hkv, k.shape[1]
    # each kv head's G query heads side by side in the rows of one plain batched matmul: XLA:CPU runs it
    # without transposing the [.., Lq, Lk] scores (real Thinker width, 512 tokens: 77 -> 46 ms)
    qh = rearrange(q, "b q (h g) d -> b h (q g) d", h=hkv)
    s = _dot("bhqd,bhkd->bhqk", qh, rearrange(k, "b k h d -> b h k d"), float32_dots)
    if scale_in_float32:
        s = s.astype(jnp.float32) * scale
    else:
        s = (s * jnp.asarray(scale, dtype)).astype(jnp.float32)
    s = s.reshape(b, hkv, lq, g, lk)
    if mask is not None:
        s = jnp.where(mask[:, None, :, None, :], s, NEG_INF)
    p = jax.nn.softmax(s, axis=-1).astype(dtype).reshape(b, hkv, lq * g, lk)
    o = _dot("bhqk,bhkd->bhqd", p, rearrange(v, "b k h d -> b h k d"), float32_dots)
    return rearrange(o, "b h (q g) d -> b q (h g) d", g=g)


def stacked_cache_attention(q: jax.Array, k_stack: jax.Array, v_stack: jax.Array, layer, mask: jax.Array, *,
                            scale: float | None = None) -> jax.Array:
    """``attention(q, k, v, mask, scale_in_float32=True)`` with k / v layer ``layer`` (traced int) of the stacked
    caches k_stack / v_stack [L, B, S, Hkv, D]; q [B, Lq, Hq, D], mask [B, Lq, S]. One query position per row
    (decode) in a float32 program for one CPU device runs ``kernels.decode_attention``: the layer read in place,
    one pass (Thinker width at KV 513, alone: 427 -> 187 us a call; decode step per layer 1.00-1.10x, Talker
    1.05-1.09x). Otherwise XLA's ops on the sliced layer."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    def xla(q, k_stack, v_stack, layer, mask):
        k = jax.lax.dynamic_index_in_dim(k_stack, layer, 0, keepdims=False).astype(q.dtype)
        v = jax.lax.dynamic_index_in_dim(v_stack, layer, 0, keepdims=False).astype(q.dtype)
        return attention(q, k, v, mask, scale=scale, scale_in_float32=True)

    if q.shape[1] != 1 or not decode_attention_usable(q[:, 0], k_stack):
        return xla(q, k_stack, v_stack, layer, mask)

    def kernel(q, k_stack, v_stack, layer, mask):
        return decode_attention(q[:, 0], k_stack, v_stack, layer, mask[:, 0], scale=scale)[:, None]

    mask = jnp.broadcast_to(mask, (q.shape[0], 1, k_stack.shape[2]))
    return jax.lax.platform_dependent(q, k_stack, v_stack, layer, mask, cpu=kernel, default=xla)


def _dot(spec: str, a: jax.Array, b: jax.Array, float32_dots: bool) -> jax.Array:
    if float32_dots:
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(a.dtype)
    return jnp.einsum(spec, a, b)


def causal_mask(q_pos: jax.Array, k_pos: jax.Array, k_valid: jax.Array | None = None) -> jax.Array:
    """q_pos [B, Lq], k_pos [B, Lk] slot indices; True where k_pos <= q_pos (and k_valid)."""
    m = k_pos[:, None, :] <= q_pos[:, :, None]
    if k_valid is not None:
        m = m & k_valid[:, None, :]
    return m
