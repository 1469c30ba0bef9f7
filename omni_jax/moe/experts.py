"""The per-expert SwiGLU, the weighted combination and the expert-weight access shared by the dispatch backends.

Expert weights are plain arrays or ``omni_jax.quant.QuantizedWeight`` (weight-only INT8 / INT4): the backends
read them only through ``expert_weight`` (one expert, dynamic index, then cast or dequantize) and
``all_expert_weights`` (the whole stack: dense oracle, ragged_dot).

bf16 numerics follow the reference's rounding points exactly (bit-for-bit on CPU against HF's eager bf16
experts): silu in fp32 rounded once, then every product and every accumulation step rounded to the
activation dtype. XLA's CPU compiler otherwise keeps fused bf16 chains in fp32 ("excess precision"), so
each rounding point is pinned with ``lax.reduce_precision``, which XLA must honour.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from omni_jax.quant.weights import as_float, take_leading


def round_to_dtype(x: jax.Array, dtype) -> jax.Array:
    """x rounded to ``dtype`` (a pinned rounding point for 16-bit floats; a cast otherwise)."""
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.bfloat16, jnp.float16):
        return x.astype(dtype)
    info = jnp.finfo(dtype)  # rounding an fp32 value: XLA cannot drop it as a no-op on a 16-bit type
    x = jax.lax.reduce_precision(x.astype(jnp.float32), exponent_bits=info.nexp, mantissa_bits=info.nmant)
    return x.astype(dtype)


def swiglu(h: jax.Array) -> jax.Array:
    """silu(gate) * up for h = [..., 2I] (gate = first I columns, as the fused HF gate_up_proj).

    silu is evaluated in float32 and rounded once, as torch's CPU kernel does for bf16 (jax.nn.silu on bf16
    rounds twice and differs from the reference in ~1/3 of the elements)."""
    if h.dtype == jnp.float32:
        g, u = jnp.split(h, 2, axis=-1)
        return jax.nn.silu(g) * u
    g, u = jnp.split(round_to_dtype(h, h.dtype), 2, axis=-1)  # the matmul's bf16 output, kept bf16
    act = round_to_dtype(jax.nn.silu(g.astype(jnp.float32)), h.dtype)
    return round_to_dtype(act * u, h.dtype)


def combine(per_slot: jax.Array, weights: jax.Array, experts: jax.Array) -> jax.Array:
    """Σ_k w_k · y_k for per_slot [T, K, H] (unweighted expert outputs), weights [T, K], experts [T, K].

    As the reference: each term is (y · w) in the activation dtype and the terms are accumulated in the
    activation dtype in ascending expert order (``index_add_`` per expert). In float32 the order only moves
    the last bit, so a single reduction is used.
    """
    dtype = per_slot.dtype
    if dtype == jnp.float32:
        return jnp.einsum("tkh,tk->th", per_slot, weights.astype(dtype))
    per_slot = round_to_dtype(per_slot, dtype)  # the down matmul's bf16 output, kept bf16
    terms = round_to_dtype(per_slot * weights[..., None].astype(dtype), dtype)
    if terms.shape[1] == 1:
        return terms[:, 0]
    order = jnp.argsort(experts, axis=-1)
    terms = jnp.take_along_axis(terms, order[..., None], axis=1)
    acc = terms[:, 0]
    for k in range(1, terms.shape[1]):  # K is small (≤ num_experts, 8 in the real model)
        acc = round_to_dtype(acc + terms[:, k], dtype)
    return acc


def expert_weight(w, e, dtype) -> jax.Array:
    """Expert ``e``'s weight [in, out] from a stack w [E, in, out] in ``dtype``: a dynamic index, then a cast
    (plain array) or a dequantization of that one expert's integers and scales (``QuantizedWeight``)."""
    return as_float(take_leading(w, e), dtype)


def all_expert_weights(w, dtype) -> jax.Array:
    """The whole stack w [E, in, out] in ``dtype`` (dequantized when it is a ``QuantizedWeight``)."""
    return as_float(w, dtype)
