"""Activation functions named as in HF's ACT2FN."""

import jax
import jax.numpy as jnp

from omni_jax.ops import trig


def silu(x):
    return jax.nn.silu(x)


def gelu(x):
    """Exact (erf) GELU: HF 'gelu', torch nn.GELU()."""
    return jax.nn.gelu(x, approximate=False)


def gelu_tanh(x):
    """HF 'gelu_pytorch_tanh'."""
    return jax.nn.gelu(x, approximate=True)


ACTIVATIONS = {"silu": silu, "gelu": gelu, "gelu_pytorch_tanh": gelu_tanh}


def snake_beta(x: jax.Array, log_alpha: jax.Array, log_beta: jax.Array, channel_axis: int = -1) -> jax.Array:
    """SnakeBeta: x + 1/(exp(beta)+1e-9) * sin(exp(alpha) * x)^2, alpha/beta per channel in log space."""
    shape = [1] * x.ndim
    shape[channel_axis] = -1
    alpha = jnp.exp(log_alpha).reshape(shape)
    beta = jnp.exp(log_beta).reshape(shape)
    return x + (1.0 / (beta + 1e-9)) * jnp.square(trig.sin(x * alpha))
