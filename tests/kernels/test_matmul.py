"""The CPU matmul kernel against float64 numpy, in float32.

Tolerance: 1e-5 of the output's largest value. A float32 sum of K <= 700 products of unit-scale terms drifts from
the exact one by ~sqrt(K) eps per unit of sum|terms| (measured: up to 1e-6 of the largest value, as XLA's own dot);
a skipped row split, a misplaced column chunk or a wrong row moves outputs by O(1) of it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax import kernels
from omni_jax.kernels.matmul import MAX_COLUMNS, MAX_ROWS, WIDE_MIN_ROWS
from omni_jax.ops.linear import linear, linears

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C++ compiler: the CPU kernels are off")


def operands(seed, lead, K, N):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal((*lead, K)), jnp.float32),
            jnp.asarray(rng.standard_normal((K, N)) / np.sqrt(K), jnp.float32))


# K > 256: the 1-2-row path sums partial products over row splits; N > 2048: it also splits columns; N = 2100 is
# not a multiple of the 64-column register tile: the several-row path finishes the last columns separately.
# K = 259: a split of 3 rows (fewer than the 4 streams of a pass) and one of 256 read as 4 streams of 64 rows.
@pytest.mark.parametrize("lead", [(1,), (2,), (3,), (2, 5), (13,), (MAX_ROWS,)])
@pytest.mark.parametrize("K,N", [(40, 12), (259, 70), (700, 2100)])
def test_matmul_matches_float64(lead, K, N):
    x, w = operands(K + N + sum(lead), lead, K, N)
    y = jax.jit(kernels.matmul)(x, w)
    ref = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    assert y.shape == (*lead, N) and y.dtype == jnp.float32
    np.testing.assert_allclose(y, ref, atol=1e-5 * float(np.abs(ref).max()), rtol=0)


def test_linear_uses_the_kernel_for_a_few_float32_rows_only():
    x, w = operands(0, (4,), 64, 32)

    def hlo(x, w):
        return jax.jit(linear).lower(x, w).as_text()

    assert "OmniMatmul" in hlo(x, w)
    assert "OmniMatmul" not in hlo(jnp.zeros((MAX_ROWS + 1, 64), jnp.float32), w)
    wide = jnp.zeros((64, MAX_COLUMNS + 1), jnp.float32)  # more columns: the kernel from WIDE_MIN_ROWS rows
    assert "OmniMatmul" not in hlo(x[:WIDE_MIN_ROWS - 1], wide)
    assert "OmniMatmul" in hlo(x[:WIDE_MIN_ROWS], wide)
    assert "OmniMatmul" not in jax.jit(lambda x, w: linear(x, w, kernel_min_rows=1)).lower(x[:1], wide).as_text()
    one = x[:1]  # a single row takes the kernel only where the caller asks for it
    assert "OmniMatmul" not in hlo(one, w)
    assert "OmniMatmul" in jax.jit(lambda x, w: linear(x, w, kernel_min_rows=1)).lower(one, w).as_text()
    assert "OmniMatmul" not in hlo(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    # a program lowered for another platform keeps XLA's dot
    other = jax.jit(linear).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    assert "OmniMatmul" not in other and "dot_general" in other


def test_gradients_are_xla_dots(monkeypatch):
    x, w = operands(1, (3,), 40, 12)

    def loss(x, w):
        return jnp.sum(jnp.sin(linear(x, w)))

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
    monkeypatch.setenv("OMNI_JAX_CPU_KERNELS", "0")
    assert not kernels.matmul_usable(x, w)
    ref = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)


# 1 and 8 rows: one parallel loop over every weight's pieces; 9 rows: the weights one at a time (register tiles).
# The widths differ per weight (a layer's q, k and v); 9000 columns > the 8192-column piece of the streaming path.
@pytest.mark.parametrize("rows", [1, 8, 9])
def test_matmul_shared_equals_one_matmul_per_weight(rows):
    rng = np.random.default_rng(rows)
    x = jnp.asarray(rng.standard_normal((rows, 700)), jnp.float32)
    ws = [jnp.asarray(rng.standard_normal((700, n)) / np.sqrt(700), jnp.float32) for n in (2100, 64, 9000, 3)]
    ys = jax.jit(kernels.matmul_shared)(x, ws)
    assert len(ys) == len(ws)
    for y, w in zip(ys, ws):
        ref = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
        assert y.shape == (rows, w.shape[1]) and y.dtype == jnp.float32
        np.testing.assert_allclose(y, ref, atol=1e-5 * float(np.abs(ref).max()), rtol=0)
        np.testing.assert_array_equal(y, jax.jit(kernels.matmul)(x, w))  # the same sums in the same order


def test_linears_read_the_weights_in_one_call_where_the_kernel_applies():
    x, w = operands(2, (1, 1), 64, 32)
    ws = (w, w[:, :8], w[:, 8:])

    def hlo(x, ws, **kw):
        return jax.jit(lambda x, ws: linears(x, ws, **kw)).lower(x, ws).as_text()

    assert hlo(x, ws, kernel_min_rows=1).count("OmniMatmulShared") == 1
    assert "OmniMatmul" not in hlo(x, ws)  # one row: XLA's dots unless the caller asks
    ys = jax.jit(lambda x, ws: linears(x, ws, kernel_min_rows=1))(x, ws)
    for y, wi in zip(ys, ws):
        np.testing.assert_allclose(y, np.asarray(x, np.float64) @ np.asarray(wi, np.float64), atol=1e-5, rtol=0)
    other = jax.jit(lambda x, ws: linears(x, ws, kernel_min_rows=1)).trace(x, ws).lower(
        lowering_platforms=("cuda",)).as_text()
    assert "OmniMatmul" not in other and "dot_general" in other


def test_matmul_shared_gradients_are_xla_dots():
    x, w = operands(3, (2,), 40, 12)
    ws = (w, w[:, :5] * 2)

    def loss(x, ws):
        return sum(jnp.sum(jnp.sin(y)) for y in kernels.matmul_shared(x, ws))

    def ref_loss(x, ws):
        return sum(jnp.sum(jnp.sin(x @ wi)) for wi in ws)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, ws)
    ref = jax.jit(jax.grad(ref_loss, argnums=(0, 1)))(x, ws)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref)):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)
