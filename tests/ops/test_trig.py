"""The polynomial sine against float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.ops import trig


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0, 3e3, 3e4])
def test_sin_matches_float64(scale):
    y = jnp.asarray(np.random.default_rng(0).standard_normal(20000) * scale, jnp.float32)
    out = jax.jit(trig.sin)(y)
    assert out.dtype == jnp.float32
    # float32 rounds sin near 1 to 6e-8; the polynomial and its reduction add at most ~4e-8
    np.testing.assert_allclose(out, np.sin(np.asarray(y, np.float64)), atol=1.2e-7, rtol=0)


def test_beyond_the_reduction_limit_it_is_jnp_sin():
    y = jnp.asarray([0.5, 2.0 * trig.REDUCTION_LIMIT, -1e7], jnp.float32)
    np.testing.assert_array_equal(jax.jit(trig.sin)(y), jnp.sin(y))


def test_bf16_and_empty():
    y = jnp.linspace(-20, 20, 4001, dtype=jnp.float32)
    out = jax.jit(trig.sin)(y.astype(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    # the float32 sine rounded once to bf16: within one bf16 rounding (2^-9 relative) of the exact value
    exact = np.sin(np.asarray(y.astype(jnp.bfloat16), np.float64))
    np.testing.assert_allclose(np.asarray(out, np.float64), exact, atol=2e-3 * 1.0, rtol=0)
    assert jax.jit(trig.sin)(jnp.zeros((0, 3), jnp.float32)).shape == (0, 3)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0, 3e3, 3e4])
def test_sin_squared_matches_float64(scale):
    """sin^2 from the sine polynomial alone (1 - s^2 on the odd quadrants): within 1.3e-7 of float64."""
    y = jnp.asarray(np.random.default_rng(1).standard_normal(20000) * scale, jnp.float32)
    y = jnp.clip(y, -trig.REDUCTION_LIMIT * 0.99, trig.REDUCTION_LIMIT * 0.99)
    out = jax.jit(trig.sin_squared_polynomial)(y)
    np.testing.assert_allclose(out, np.sin(np.asarray(y, np.float64)) ** 2, atol=1.3e-7, rtol=0)
