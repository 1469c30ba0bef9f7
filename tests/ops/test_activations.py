"""SnakeBeta against HF's module (Qwen3OmniMoeSnakeBeta), fp32 and bf16, inside and beyond the polynomial's range."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeSnakeBeta

from omni_jax.ops import trig
from omni_jax.ops.activations import snake_beta


def _hf_snake(x: np.ndarray, log_alpha: np.ndarray, log_beta: np.ndarray, dtype=torch.float32) -> np.ndarray:
    mod = Qwen3OmniMoeSnakeBeta(x.shape[-1])
    with torch.no_grad():
        mod.alpha.copy_(torch.from_numpy(log_alpha))
        mod.beta.copy_(torch.from_numpy(log_beta))
        mod = mod.to(dtype)
        out = mod(torch.from_numpy(x).to(dtype).permute(0, 2, 1)).permute(0, 2, 1)
    return out.float().numpy()


def _inputs(scale: float, c: int = 24):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 300, c)) * scale).astype(np.float32)
    log_alpha = rng.uniform(-1.0, 1.5, c).astype(np.float32)  # alpha 0.37 .. 4.5: many periods of the sine
    log_beta = rng.uniform(-2.0, 1.0, c).astype(np.float32)  # 1 / beta up to 7.4 magnifies the sine's error
    return x, log_alpha, log_beta


@pytest.mark.parametrize("scale", [0.5, 20.0, 1000.0, 2e5])
def test_snake_beta_matches_hf_fp32(scale):
    """2e5 takes the jnp.sin branch (|x| alpha beyond trig.REDUCTION_LIMIT); the others the polynomial.
    Tolerance: the sine squared within 1.3e-7 (trig's polynomial) times 1 / beta <= 7.4, plus 4 float32 spacings
    of the largest output: both sides round x * alpha, the sine, its product with 1 / beta and the sum, and
    torch's sinf differs from the float64 sine by up to ~3 spacings of the output at |x| ~ 4e3 (measured; the
    previous implementation, a cond around the sine alone, was as far from HF)."""
    x, la, lb = _inputs(scale)
    out = jax.jit(snake_beta)(jnp.asarray(x), jnp.asarray(la), jnp.asarray(lb))
    chex.assert_shape(out, x.shape)
    chex.assert_type(out, jnp.float32)
    ref = _hf_snake(x, la, lb)
    uses_polynomial = np.abs(x).max() * np.exp(la).max() < trig.REDUCTION_LIMIT
    assert uses_polynomial == (scale < 1e5)
    tol = 7.4 * 1.3e-7 + 4 * np.spacing(np.float32(np.abs(ref).max()))
    np.testing.assert_allclose(np.asarray(out), ref, atol=tol, rtol=0)


def test_snake_beta_matches_hf_bf16():
    """bf16: the float32 sine rounded to bf16 before squaring, as torch rounds it. XLA:CPU keeps a fused
    elementwise chain's intermediates in float32 where torch rounds x * alpha to bf16 (relative 2^-9), so the
    sine's argument differs by up to |x alpha| 2^-9, its square by as much (slope <= 1), times 1 / beta; plus
    two bf16 spacings of the output. Measured: 0.375 against a bound of ~1.5, as with the previous
    implementation; most outputs are equal."""
    x, la, lb = _inputs(3.0)
    xb = jnp.asarray(x, jnp.bfloat16)
    out = jax.jit(snake_beta)(xb, jnp.asarray(la, jnp.bfloat16), jnp.asarray(lb, jnp.bfloat16))
    chex.assert_type(out, jnp.bfloat16)
    ref = _hf_snake(np.asarray(xb.astype(jnp.float32)), la, lb, torch.bfloat16)
    err = np.abs(np.asarray(out.astype(jnp.float32)) - ref)
    spacing = 2.0 ** (np.floor(np.log2(np.abs(ref).max())) - 7)  # bf16: 8 significant bits
    argument = np.abs(x).max() * np.exp(la).max()
    assert err.max() <= np.exp(-lb).max() * argument * 2.0 ** -9 + 2 * spacing
    assert np.median(err) == 0.0  # most elements round to the same bf16 value
