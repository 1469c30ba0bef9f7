"""``matmul``: x @ w for a few rows of x, the weight read in place at memory bandwidth (``cpu/matmul.cc``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from omni_jax.kernels.build import available, usable_here

# The rows where the kernel beats XLA:CPU's dot, float32, [1024, 3072] weights read from memory (from cache):
# 8 rows 1.54 -> 0.91 ms, 25 rows 2.48 -> 1.20 ms (2.21 -> 0.79); 64 rows 1.85 -> 1.61 ms from cache; at 100
# rows XLA's GEMM runs at 270 GF/s. On 1-2 rows XLA's GEMV is as fast from memory and faster from cache
# (wide weights: [2048, 151936] 36 vs 42 ms), so they keep it.
MIN_ROWS, MAX_ROWS = 3, 64


def matmul_usable(x, w) -> bool:
    """True when ``matmul`` should run: float32 operands, w 2-D, MIN_ROWS..MAX_ROWS rows of x, kernels usable."""
    rows = 1
    for d in x.shape[:-1]:
        rows *= d
    return (x.dtype == jnp.float32 and w.dtype == jnp.float32 and w.ndim == 2 and x.ndim >= 1
            and MIN_ROWS <= rows <= MAX_ROWS and usable_here())


def matmul(x, w) -> jax.Array:
    """x [..., K] @ w [K, N] -> [..., N] in float32 (float32 accumulation in a fixed order). Differentiable: the
    gradients are XLA's dots. On platforms other than CPU the program keeps XLA's dot."""
    if not available():
        raise RuntimeError("omni_jax.kernels: the CPU kernels are unavailable (no C++ compiler, a failed build, "
                           "or OMNI_JAX_CPU_KERNELS=0); use x @ w")
    return _matmul(x, w)


def _xla(x, w):
    return jnp.einsum("...i,io->...o", x, w, preferred_element_type=jnp.float32)


def _kernel(x, w):
    flat = x.reshape(-1, x.shape[-1])
    call = jax.ffi.ffi_call("OmniMatmul", jax.ShapeDtypeStruct((flat.shape[0], w.shape[1]), jnp.float32),
                            vmap_method="sequential")
    return call(flat, w).reshape(*x.shape[:-1], w.shape[1])


@jax.custom_vjp
def _matmul(x, w):
    return jax.lax.platform_dependent(x, w, cpu=_kernel, default=_xla)


def _matmul_fwd(x, w):
    return _matmul(x, w), (x, w)


def _matmul_bwd(res, g):
    x, w = res
    _, vjp = jax.vjp(_xla, x, w)
    return vjp(g)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)
