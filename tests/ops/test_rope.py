"""``rope.rotate`` against HF's formula ``x * cos + rotate_half(x) * sin`` in float64 numpy.

Tolerance: 1e-6 absolute on O(1) values (float32 rounding of one product pair and a sum). cos/sin here have
different halves (HF's repeat their halves), so a half taken from the wrong side, or a sign on the wrong half,
moves outputs by O(1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.ops.rope import apply_rope, rotate


def hf_rotate(x, cos, sin):
    x1, x2 = np.split(x, 2, axis=-1)
    return x * cos + np.concatenate([-x2, x1], axis=-1) * sin


@pytest.mark.parametrize("shape", [(2, 5, 3, 8), (1, 1, 4, 128)])
def test_apply_rope_matches_hf_rotate_half(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape)
    ang = rng.standard_normal((shape[0], shape[1], shape[-1]))
    cos, sin = np.cos(ang), np.sin(ang)
    out = jax.jit(apply_rope)(*(jnp.asarray(a, jnp.float32) for a in (x, cos, sin)))
    assert out.shape == shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, hf_rotate(x, cos[:, :, None], sin[:, :, None]), atol=1e-6, rtol=0)


def test_rotate_broadcasts_like_the_formula():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, 16))  # vision's [N, heads, D] with cos/sin [N, 1, D]
    cos, sin = rng.standard_normal((6, 1, 16)), rng.standard_normal((6, 1, 16))
    out = rotate(*(jnp.asarray(a, jnp.float32) for a in (x, cos, sin)))
    np.testing.assert_allclose(out, hf_rotate(x, cos, sin), atol=1e-6, rtol=0)
