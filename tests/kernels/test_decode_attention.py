"""The decode-attention CPU kernel against ``ops.attention`` (XLA's ops) on a layer of a stacked cache, float32.

Tolerance: 1e-5 of the largest |v|. Outputs are convex combinations of v's rows; the kernel's scores, softmax and
sums differ from XLA's only in float32 summation order and the last ulp of e^x (measured: up to 2e-6 of it).
q and k are scaled so the softmax is peaked: a wrong kv head for a query head, a wrong layer or batch row, a
dropped mask or scale moves outputs by O(1) of it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax import kernels
from omni_jax.ops import attention as attention_ops
from omni_jax.ops.attention import attention, stacked_cache_attention

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C++ compiler: the CPU kernels are off")


def case(seed, B, L, S, Hkv, G, D):
    rng = np.random.default_rng(seed)
    k = jnp.asarray(rng.standard_normal((L, B, S, Hkv, D)) * 2, jnp.float32)
    v = jnp.asarray(rng.standard_normal((L, B, S, Hkv, D)), jnp.float32)
    q = jnp.asarray(rng.standard_normal((B, 1, Hkv * G, D)) * 2, jnp.float32)
    mask = jnp.asarray(rng.random((B, 1, S)) < 0.6)
    if B > 1:
        mask = mask.at[-1].set(False)  # a row that sees nothing: uniform weights, as ops.attention gives
    return q, k, v, mask


# D = 128: 16-key score blocks, two heads' sums in registers; S = 37, 513: keys left after the blocks;
# G = 3: a head left after the pairs; D = 144: the sums one head at a time; D = 20: every step per float
@pytest.mark.parametrize("B,L,S,Hkv,G,D", [(1, 3, 513, 4, 8, 128), (2, 2, 37, 2, 3, 32), (3, 1, 5, 1, 1, 20),
                                           (1, 2, 40, 2, 2, 144)])
def test_kernel_matches_xla_attention(B, L, S, Hkv, G, D):
    q, k, v, mask = case(S + D, B, L, S, Hkv, G, D)
    run = jax.jit(stacked_cache_attention)
    assert "OmniDecodeAttention" in run.lower(q, k, v, 0, mask).as_text()
    for layer in range(L):
        y = run(q, k, v, layer, mask)
        ref = attention(q, k[layer], v[layer], mask, scale_in_float32=True)
        assert y.shape == q.shape and y.dtype == jnp.float32
        np.testing.assert_allclose(y, ref, atol=1e-5 * float(jnp.abs(v).max()), rtol=0)


def test_xla_ops_where_the_kernel_does_not_apply(monkeypatch):
    q, k, v, mask = case(0, 1, 2, 16, 2, 2, 16)
    lowered = jax.jit(stacked_cache_attention).trace(q, k, v, 1, mask).lower(lowering_platforms=("cuda",))
    assert "OmniDecodeAttention" not in lowered.as_text()
    assert "OmniDecodeAttention" not in jax.jit(stacked_cache_attention).lower(
        q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), 1, mask).as_text()
    monkeypatch.setattr(attention_ops, "decode_attention_usable", lambda *a: False)
    y = jax.jit(lambda *a: stacked_cache_attention(*a))(q, k, v, 1, mask)
    np.testing.assert_allclose(y, attention(q, k[1], v[1], mask, scale_in_float32=True), atol=1e-6, rtol=0)
