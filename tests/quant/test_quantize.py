"""Weight-only INT8 / INT4 quantization: storage, error bounds, and the MoE block reading int weights.

Tolerances:
- quantize -> dequantize: every element within scale/2 of the float weight (round-to-nearest), with 1e-6
  relative slack for the fp32 division (reached: the bound holds, max excess 0).
- MoE block with QuantizedWeight experts (dequantized per expert inside the backend) vs the same block run
  on the weights dequantized up front: 1e-5 max abs on outputs of O(1), allowing for fp32 summation order
  (reached: 0, bit-identical on CPU for every backend; the dequantized values are identical). bf16 gather:
  asserted bit-identical.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.moe import RoutingConfig, moe_block
from omni_jax.quant import QuantizationError, QuantizedWeight, dequantize, pack_int4, param_bytes, quantize
from omni_jax.quant import unpack_int4
from omni_jax.quant.weights import int_values

# ------------------------------------------------------------------------------------------ quantize


def _scales_per_element(qw: QuantizedWeight) -> np.ndarray:
    return np.repeat(np.asarray(qw.scale, np.float32), qw.group, axis=-2)


@pytest.mark.parametrize("bits", [8, 4])
def test_error_within_half_a_step(bits):
    w = jax.random.normal(jax.random.PRNGKey(0), (3, 256, 40), jnp.float32)
    w = w.at[0, :128, 0].set(0.0)  # an all-zero group: scale 0, exact, no NaN
    qw = quantize(w, bits, 128)
    assert qw.shape == w.shape and qw.group == 128
    chex.assert_shape(qw.scale, (3, 2, 40))
    err = np.abs(np.asarray(dequantize(qw)) - np.asarray(w))
    bound = _scales_per_element(qw) / 2
    assert np.all(err <= bound * (1 + 1e-6) + 1e-12), (err - bound).max()
    assert float(qw.scale[0, 0, 0]) == 0.0 and np.all(err[0, :128, 0] == 0)
    qmax = 2 ** (bits - 1) - 1
    ints = np.asarray(int_values(qw))
    assert ints.min() >= -qmax and ints.max() <= qmax and np.abs(ints).max() == qmax  # absmax hits ±qmax
    assert err.max() > 0


def test_int4_pack_round_trip_and_representable_values_exact():
    rng = np.random.default_rng(0)
    ints = rng.integers(-8, 8, size=(2, 6, 5)).astype(np.int8)
    packed = pack_int4(jnp.asarray(ints))
    assert packed.dtype == jnp.uint8 and packed.shape == (2, 3, 5)
    np.testing.assert_array_equal(np.asarray(unpack_int4(packed)), ints)
    # weights that are exactly q · s (s a power of two, each group's absmax = qmax · s) round-trip exactly
    for bits in (4, 8):
        qmax = 2 ** (bits - 1) - 1
        q = rng.integers(-qmax, qmax + 1, size=(4, 64, 16)).astype(np.int8)
        q[:, ::32, :] = qmax * np.sign(rng.standard_normal((4, 2, 16))).astype(np.int8)  # a ±qmax per group
        s = 2.0 ** rng.integers(-6, 0, size=(4, 2, 16))
        w = (q.reshape(4, 2, 32, 16) * s[:, :, None, :]).reshape(4, 64, 16).astype(np.float32)
        qw = quantize(w, bits, 32)
        np.testing.assert_array_equal(np.asarray(int_values(qw)), q)
        np.testing.assert_array_equal(np.asarray(dequantize(qw)), w)


def test_storage_is_really_one_byte_and_half_a_byte():
    w = jnp.ones((2, 8, 256, 64), jnp.bfloat16)
    n = w.size
    q8, q4 = quantize(w, 8, 128), quantize(w, 4, 128)
    assert q8.q.dtype == jnp.int8 and q8.q.nbytes == n
    assert q4.q.dtype == jnp.uint8 and q4.q.nbytes == n // 2
    scale_bytes = n // 128 * 4  # one fp32 scale per 128 weights
    assert q8.nbytes == n + scale_bytes and q4.nbytes == n // 2 + scale_bytes
    assert param_bytes({"a": q4, "b": jnp.zeros(3, jnp.float32)}) == q4.nbytes + 12
    assert dequantize(q4, jnp.bfloat16).dtype == jnp.bfloat16


def test_small_input_dim_uses_one_group_and_bad_shapes_fail():
    assert quantize(jnp.ones((24, 8)), 4, 128).group == 24
    with pytest.raises(QuantizationError, match="not divisible by the group size 128"):
        quantize(jnp.ones((200, 8)), 8, 128)
    with pytest.raises(QuantizationError, match="even input dim"):
        quantize(jnp.ones((25, 8)), 4, 128)
    with pytest.raises(QuantizationError, match="unsupported bit width"):
        quantize(jnp.ones((16, 8)), 3, 16)
    with pytest.raises(QuantizationError, match="leading"):
        quantize(jnp.ones((2, 16, 8)), 8, 16)[0, 1]
    assert issubclass(QuantizationError, ValueError)


def test_pytree_leading_axis_ops():
    qw = quantize(jax.random.normal(jax.random.PRNGKey(1), (3, 4, 32, 8)), 4, 16)
    leaves, treedef = jax.tree.flatten(qw)
    assert len(leaves) == 2 and jax.tree.unflatten(treedef, leaves).bits == 4
    np.testing.assert_array_equal(dequantize(qw[1, 2]), dequantize(qw)[1, 2])
    sliced = jax.tree.map(lambda a: a[1:3], qw)  # what the decoder's segment slicing does
    assert sliced.shape == (2, 4, 32, 8)
    out = jax.jit(lambda q: dequantize(q[0], jnp.float32).sum())(qw)
    np.testing.assert_allclose(out, dequantize(qw)[0].sum(), rtol=1e-6)


# ------------------------------------------------------------------------------------------ MoE block

E, H, I, K = 8, 64, 32, 2


def _moe_params(seed, lead=()):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    return dict(
        router=jax.random.normal(k[0], (*lead, H, E), jnp.float32),
        gate_up=jax.random.normal(k[1], (*lead, E, H, 2 * I), jnp.float32) / np.sqrt(H),
        down=jax.random.normal(k[2], (*lead, E, I, H), jnp.float32) / np.sqrt(I),
    )


def _quantized(p, bits, group):
    return dict(p, gate_up=quantize(p["gate_up"], bits, group), down=quantize(p["down"], bits, group))


def _dequantized(pq):
    return dict(pq, gate_up=dequantize(pq["gate_up"]), down=dequantize(pq["down"]))


# every backend; stacked (a layer picked inside the block; gather reads the flattened [L·E] stack) and
# not; both bit widths. Kept to a few cases: each costs two compiles.
CASES = [("gather", 2, True, 4), ("gather", 2, False, 8), ("tiles", 13, True, 8), ("dense", 13, False, 4),
         ("ragged", 5, False, 8)]


@pytest.mark.parametrize("backend,T,stacked,bits", CASES)
def test_moe_block_quantized_equals_dequantized_up_front(backend, T, stacked, bits):
    lead = (3,) if stacked else ()
    pq = _quantized(_moe_params(0, lead), bits, 16)
    pd = _dequantized(pq)
    x = jax.random.normal(jax.random.PRNGKey(7), (T, H), jnp.float32)
    run = jax.jit(functools.partial(moe_block, routing=RoutingConfig(E, K), backend=backend, stacked=stacked,
                                    layer=1 if stacked else None))
    y_q, st_q = run(x, pq)
    y_d, st_d = run(x, pd)
    np.testing.assert_allclose(y_q, y_d, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(st_q.counts, st_d.counts)
    assert float(jnp.max(jnp.abs(y_d))) > 0.1


def test_moe_block_bf16_gather_matches_dequantized_up_front():
    pq = _quantized(_moe_params(1), 4, 32)
    pd = jax.tree.map(lambda a: a.astype(jnp.bfloat16), _dequantized(pq))
    pq = dict(pq, router=pd["router"])
    x = jax.random.normal(jax.random.PRNGKey(8), (1, H), jnp.bfloat16)
    run = jax.jit(functools.partial(moe_block, routing=RoutingConfig(E, K), backend="gather"))
    y_q, _ = run(x, pq)
    y_d, _ = run(x, pd)
    assert y_q.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y_q, np.float32), np.asarray(y_d, np.float32))
