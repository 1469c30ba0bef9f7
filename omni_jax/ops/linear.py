"""Dense layers. Weights are stored [in, out] (HF Linear stores [out, in]; the loader transposes)."""

import jax
import jax.numpy as jnp

from omni_jax.kernels.matmul import MIN_ROWS, matmul, matmul_shared, matmul_usable
from omni_jax.ops.activations import ACTIVATIONS


def linear(x: jax.Array, w: jax.Array, b: jax.Array | None = None, *, kernel_min_rows: int = MIN_ROWS) -> jax.Array:
    """x @ w (+ b). Accumulates in fp32 and rounds once to x.dtype, as torch's bf16 CPU kernels do (and on
    XLA:CPU a bf16-result dot is ~3x slower than an fp32-accumulating one). A few float32 rows on one CPU device
    go through ``omni_jax.kernels.matmul``, which reads ``w`` at memory bandwidth (from ``kernel_min_rows`` rows:
    1 where single rows measured faster through it, see ``kernels.matmul.MIN_ROWS``)."""
    if matmul_usable(x, w, kernel_min_rows):
        y = matmul(x, w)
    else:
        y = jnp.einsum("...i,io->...o", x, w.astype(x.dtype), preferred_element_type=jnp.float32)
    if b is not None:
        y = y + b.astype(jnp.float32)
    return y.astype(x.dtype)


def linears(x: jax.Array, ws, *, kernel_min_rows: int = MIN_ROWS) -> tuple:
    """``linear(x, w)`` for each weight of ``ws`` (no biases; the weights share their input width). Where the
    kernel applies to every weight they are read in one ``kernels.matmul_shared`` call."""
    if all(matmul_usable(x, w, kernel_min_rows) for w in ws):
        return tuple(y.astype(x.dtype) for y in matmul_shared(x, ws))
    return tuple(linear(x, w, kernel_min_rows=kernel_min_rows) for w in ws)


def swiglu_mlp(x: jax.Array, gate_up: jax.Array, down: jax.Array, *, kernel_min_rows: int = MIN_ROWS) -> jax.Array:
    """down(silu(gate(x)) * up(x)) with gate and up fused as [H, 2I] (gate = first I columns)."""
    g, u = jnp.split(linear(x, gate_up, kernel_min_rows=kernel_min_rows), 2, axis=-1)
    return linear(jax.nn.silu(g) * u, down, kernel_min_rows=kernel_min_rows)


def mlp2(x, w1, b1, w2, b2, act: str):
    """fc2(act(fc1(x))) with biases."""
    return linear(ACTIVATIONS[act](linear(x, w1, b1)), w2, b2)
