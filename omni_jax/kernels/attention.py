"""``decode_attention``: one query position per batch row against one layer of a stacked KV cache, read in place.

XLA:CPU runs a decode step's attention as a dozen small ops: the layer's K and V are transposed to heads-first
copies for the two batched products, then the mask, the softmax and the output transpose (Thinker width, KV
513: 427 us a call for 2 MB of cache). ``cpu/decode_attention.cc`` reads each kv head's rows where they lie in
the stacked cache and does the scores (16 keys at a time, their sums by one shuffle tree), the masked softmax
and the weighted sum of V (two heads' sums in registers) in one pass: 187 us.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.kernels.build import available, usable_here

MAX_GROUP = 16  # query heads per kv head the kernel takes


def decode_attention_usable(q, k_stack) -> bool:
    """True when ``decode_attention`` can run: float32 q [B, Hq, D] and a stacked cache [L, B, S, Hkv, D], at
    most MAX_GROUP query heads per kv head, kernels usable here."""
    return (q.dtype == jnp.float32 and k_stack.dtype == jnp.float32 and q.ndim == 3 and k_stack.ndim == 5
            and q.shape[1] % k_stack.shape[3] == 0 and q.shape[1] // k_stack.shape[3] <= MAX_GROUP
            and usable_here())


def decode_attention(q, k_stack, v_stack, layer, mask, *, scale: float) -> jax.Array:
    """Attention of q [B, Hq, D] (one position per batch row) against layer ``layer`` (traced int, clamped to
    range) of k_stack / v_stack [L, B, S, Hkv, D] under mask [B, S] (True = may attend), the scores scaled in
    float32; [B, Hq, D] float32. The CPU kernel call itself: ``ops.attention.stacked_cache_attention`` puts it
    behind ``platform_dependent`` with XLA's ops for other platforms. Forward only."""
    if not available():
        raise RuntimeError("omni_jax.kernels: the CPU kernels are unavailable (no C++ compiler, a failed build, "
                           "or OMNI_JAX_CPU_KERNELS=0); use omni_jax.ops.attention.attention")
    call = jax.ffi.ffi_call("OmniDecodeAttention", jax.ShapeDtypeStruct(q.shape, jnp.float32),
                            vmap_method="sequential")
    return call(q, k_stack, v_stack, jnp.asarray(layer, jnp.int32), mask.astype(bool), scale=np.float32(scale))
