"""``ops.attention`` against a float64 numpy reference, across the query-chunking threshold.

Queries longer than ``QUERY_CHUNK`` run chunk by chunk through ``lax.map`` (padded to a multiple); every mask
form the models pass (none, one row for every query, a row per query) must give the unchunked sums.
Tolerance 1e-5 max abs on O(1) outputs: float32 rounding of 64-term dot products and a softmax.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.ops.attention import QUERY_CHUNK, attention


def _reference(q, k, v, mask):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        s = np.where(np.asarray(mask)[:, None], s, -1e300)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


@pytest.mark.parametrize("lq", [QUERY_CHUNK - 1, QUERY_CHUNK, 2 * QUERY_CHUNK + 22])
@pytest.mark.parametrize("mask_kind", ["none", "one_row", "per_query"])
def test_matches_float64_reference(lq, mask_kind):
    rng = np.random.default_rng(lq)
    b, lk, hq, hkv, d = 2, lq + 3, 4, 2, 16
    q = rng.standard_normal((b, lq, hq, d)).astype(np.float32)
    k = rng.standard_normal((b, lk, hkv, d)).astype(np.float32)
    v = rng.standard_normal((b, lk, hkv, d)).astype(np.float32)
    if mask_kind == "none":
        mask = None
    elif mask_kind == "one_row":
        mask = rng.random((b, 1, lk)) > 0.3
    else:  # causal with the 3 extra keys in front, and a padded key per row
        mask = np.arange(lk)[None, None, :] <= np.arange(lq)[None, :, None] + 3
        mask = np.broadcast_to(mask, (b, lq, lk)).copy()
        mask[:, :, 1] = False
    out = jax.jit(attention)(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                             None if mask is None else jnp.asarray(mask))
    chex.assert_shape(out, (b, lq, hq, d))
    chex.assert_type(out, jnp.float32)
    np.testing.assert_allclose(np.asarray(out), _reference(q, k, v, mask), atol=1e-5, rtol=0)


def test_chunked_rows_equal_one_pass():
    """Splitting the queries changes no row: the first QUERY_CHUNK rows of a long query equal that short query."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((1, 3 * QUERY_CHUNK, 4, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 3 * QUERY_CHUNK, 2, 16)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((1, 3 * QUERY_CHUNK, 2, 16)), jnp.float32)
    long = attention(q, k, v)
    short = attention(q[:, :QUERY_CHUNK], k, v)
    np.testing.assert_allclose(np.asarray(long[:, :QUERY_CHUNK]), np.asarray(short), atol=1e-6, rtol=0)
