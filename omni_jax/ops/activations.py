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
    """SnakeBeta: x + 1/(exp(beta)+1e-9) * sin(exp(alpha) * x)^2, alpha/beta per channel in log space.

    The sine is ``trig``'s polynomial (its square, ``trig.sin_squared_polynomial``, in float32) when
    max|x| * max(alpha) is within its range, else ``jnp.sin``. The choice is one ``lax.cond`` around the whole
    expression, so each branch is one fused pass over x; a cond around the sine alone made XLA:CPU write
    x * alpha and the sine out between three passes (Code2Wav's last block, [47448, 96]: 4.6 -> 1.7 ms).
    Other dtypes round the float32 sine to x's dtype before squaring, as torch does.
    """
    shape = [1] * x.ndim
    shape[channel_axis] = -1
    alpha = jnp.exp(log_alpha).reshape(shape)
    inv_beta = 1.0 / (jnp.exp(log_beta).reshape(shape) + 1e-9)
    f32 = jnp.float32

    def fast_sin_squared(y):
        if y.dtype == f32:
            return trig.sin_squared_polynomial(y)
        return jnp.square(trig.sin_polynomial(y.astype(f32)).astype(y.dtype))

    def exact_sin_squared(y):
        return jnp.square(jnp.sin(y.astype(f32)).astype(y.dtype))

    bound = jnp.max(jnp.abs(x), initial=0.0).astype(f32) * jnp.max(alpha, initial=0.0).astype(f32)
    return jax.lax.cond(bound < trig.REDUCTION_LIMIT,
                        lambda x: x + inv_beta * fast_sin_squared(x * alpha),
                        lambda x: x + inv_beta * exact_sin_squared(x * alpha), x)
