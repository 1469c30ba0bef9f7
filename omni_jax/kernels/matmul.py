"""``matmul``: x @ w for a few rows of x, the weight read in place at memory bandwidth (``cpu/matmul.cc``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from omni_jax.kernels.build import available, usable_here

# Where the kernel beats XLA:CPU's dot (float32, medians, quiet machine; from memory = 40+ distinct weights cycled,
# from cache = one weight, which this CPU's 480 MB L3 keeps): 2 rows of [1024, 3072]: 0.84 -> 0.66 ms from memory
# (0.52 -> 0.39 from cache); 25 rows 2.58 -> 1.39 (1.29 -> 1.00); 64 rows 2.27 -> 1.70 from cache; from ~100 rows
# XLA's GEMM runs at 270+ GF/s. One row: alone the kernel wins too ([2048, 4096]: 1.51 -> 1.27 ms from memory,
# 0.79 -> 0.64 from cache), and it makes a code-predictor frame (5 layers x 15 steps of 1 row) 209.5 -> 176.8 ms.
# A layer's q/k/v through ``matmul_shared`` (one call) from memory, 1 / 4 / 8 rows: 1.04 / 1.45 / 2.44 ms against
# 1.34 / 2.32 / 3.04 ms for three ``matmul`` calls and 3.05 / 3.97 / 5.28 ms for XLA's dots. The decoder stack
# asks for 1 row (``models.decoder``: o, and q/k/v up to 16 MB of weights); elsewhere 1-2 rows keep XLA's dot unless the
# caller asks (``min_rows=1``: the code predictor). Weights wider than MAX_COLUMNS keep XLA's dot for one row
# and take the kernel from WIDE_MIN_ROWS rows, whatever the caller asks: the Thinker's lm_head [2048, 151936] from
# memory, 1 / 2 / 4 / 8 rows: XLA 40.6 / 92.8 / 114.4 / 128.9 ms, the kernel 43.5 / 48.1 / 51.4 / 84.2 ms.
MIN_ROWS, MAX_ROWS = 3, 64
MAX_COLUMNS = 65536
WIDE_MIN_ROWS = 2


def matmul_usable(x, w, min_rows: int = MIN_ROWS) -> bool:
    """True when ``matmul`` should run: float32 operands, w 2-D, min_rows..MAX_ROWS rows of x (WIDE_MIN_ROWS..MAX_ROWS
    where w has more than MAX_COLUMNS columns), kernels usable here."""
    rows = 1
    for d in x.shape[:-1]:
        rows *= d
    if x.dtype != jnp.float32 or w.dtype != jnp.float32 or w.ndim != 2 or x.ndim < 1:
        return False
    lowest = min_rows if w.shape[1] <= MAX_COLUMNS else WIDE_MIN_ROWS
    return lowest <= rows <= MAX_ROWS and usable_here()


def matmul(x, w) -> jax.Array:
    """x [..., K] @ w [K, N] -> [..., N] in float32 (float32 accumulation in a fixed order). Differentiable: the
    gradients are XLA's dots. On platforms other than CPU the program keeps XLA's dot."""
    if not available():
        raise RuntimeError("omni_jax.kernels: the CPU kernels are unavailable (no C++ compiler, a failed build, "
                           "or OMNI_JAX_CPU_KERNELS=0); use x @ w")
    return _matmul(x, w)


def matmul_shared(x, ws) -> tuple:
    """``tuple(x @ w for w in ws)`` in one kernel call (the weights share K): with up to 8 rows every weight's
    pieces are the work items of one parallel loop, so the cores stream the weights back to back (a layer's
    q/k/v projections: one call instead of three that XLA would run side by side, each on one core). Each
    output equals ``matmul(x, w)``. Differentiable like ``matmul``."""
    if not available():
        raise RuntimeError("omni_jax.kernels: the CPU kernels are unavailable (no C++ compiler, a failed build, "
                           "or OMNI_JAX_CPU_KERNELS=0); use x @ w for each w")
    return _matmul_shared(x, tuple(ws))


def _xla(x, w):
    return jnp.einsum("...i,io->...o", x, w, preferred_element_type=jnp.float32)


def _kernel(x, w):
    flat = x.reshape(-1, x.shape[-1])
    call = jax.ffi.ffi_call("OmniMatmul", jax.ShapeDtypeStruct((flat.shape[0], w.shape[1]), jnp.float32),
                            vmap_method="sequential")
    return call(flat, w).reshape(*x.shape[:-1], w.shape[1])


def _xla_shared(x, ws):
    return tuple(_xla(x, w) for w in ws)


def _kernel_shared(x, ws):
    flat = x.reshape(-1, x.shape[-1])
    shapes = tuple(jax.ShapeDtypeStruct((flat.shape[0], w.shape[1]), jnp.float32) for w in ws)
    outs = jax.ffi.ffi_call("OmniMatmulShared", shapes, vmap_method="sequential")(flat, *ws)
    return tuple(y.reshape(*x.shape[:-1], w.shape[1]) for y, w in zip(outs, ws))


def _kernel_with_xla_gradient(kernel, xla):
    """``f(x, w)``: ``kernel`` in programs for CPU, ``xla`` in programs for other platforms; its gradient is
    always ``xla``'s."""

    @jax.custom_vjp
    def f(x, w):
        return jax.lax.platform_dependent(x, w, cpu=kernel, default=xla)

    def fwd(x, w):
        return f(x, w), (x, w)

    def bwd(res, g):
        _, vjp = jax.vjp(xla, *res)
        return vjp(g)

    f.defvjp(fwd, bwd)
    return f


_matmul = _kernel_with_xla_gradient(_kernel, _xla)
_matmul_shared = _kernel_with_xla_gradient(_kernel_shared, _xla_shared)
