"""``sin`` and ``sin^2`` as short polynomials: XLA:CPU's own ``sin`` runs ~6x slower than its fused multiply-adds.

Code2Wav's SnakeBeta takes the sine of every activation (the last decoder block: 47k samples x 96 channels per
2 s of audio); there ``jnp.sin`` cost 19 ms of a 52 ms residual unit. This one is Cephes' ``sinf``: the argument
reduced by multiples of pi/2 in three exact parts (Cody-Waite), then a degree-7 sine or degree-8 cosine
polynomial on [-pi/4, pi/4]. Error <= 1e-7 absolute (``jnp.sin``: 3e-8) for |y| < REDUCTION_LIMIT; beyond that
the reduction is no longer exact and ``jnp.sin`` is used for the whole array. ``sin_squared_polynomial`` needs
only the sine polynomial: sin^2(n pi/2 + r) is sin^2(r) for even n and 1 - sin^2(r) for odd n (error <= 1.3e-7).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# n * 1.5703125 is exact in float32 while n has <= 16 bits
REDUCTION_LIMIT = float(2 ** 15)
_PIO2 = (np.float32(1.5703125), np.float32(4.837512969970703125e-4), np.float32(7.54978995489188216e-8))
_SIN = (np.float32(-1.6666654611e-1), np.float32(8.3321608736e-3), np.float32(-1.9515295891e-4))
_COS = (np.float32(4.166664568298827e-2), np.float32(-1.388731625493765e-3), np.float32(2.443315711809948e-5))


def _reduce(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """y = n pi/2 + r with |r| <= pi/4: (n, r), exact for |y| < REDUCTION_LIMIT."""
    n = jnp.round(y * np.float32(2 / np.pi))
    return n, ((y - n * _PIO2[0]) - n * _PIO2[1]) - n * _PIO2[2]


def _sin_of_reduced(r: jax.Array, z: jax.Array) -> jax.Array:
    return r + r * z * (_SIN[0] + z * (_SIN[1] + z * _SIN[2]))


def sin_squared_polynomial(y: jax.Array) -> jax.Array:
    """sin(y)^2 for float32 |y| < REDUCTION_LIMIT (no check: beyond it the result is wrong)."""
    n, r = _reduce(y)
    s = _sin_of_reduced(r, r * r)
    s2 = s * s
    return jnp.where((n.astype(jnp.int32) & 1) == 1, 1 - s2, s2)


def sin_polynomial(y: jax.Array) -> jax.Array:
    """sin(y) for float32 |y| < REDUCTION_LIMIT (no check: beyond it the result is wrong)."""
    n, r = _reduce(y)
    z = r * r
    s = _sin_of_reduced(r, z)
    c = 1 - 0.5 * z + z * z * (_COS[0] + z * (_COS[1] + z * _COS[2]))
    quadrant = n.astype(jnp.int32) & 3
    v = jnp.where((quadrant & 1) == 1, c, s)
    return jnp.where(quadrant >= 2, -v, v)


def sin(y: jax.Array) -> jax.Array:
    """sin(y) in y's dtype, computed in float32 (as XLA and torch compute a bf16 sine)."""
    yf = y.astype(jnp.float32)
    out = jax.lax.cond(jnp.max(jnp.abs(yf), initial=0.0) < REDUCTION_LIMIT, sin_polynomial, jnp.sin, yf)
    return out.astype(y.dtype)
