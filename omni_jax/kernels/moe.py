"""``moe_experts``: the routed SwiGLU experts of a few tokens, each chosen expert read where it lies in the stack."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from omni_jax.kernels.build import available, usable_here


def moe_experts_usable(x, gate_up, down) -> bool:
    """True when ``moe_experts`` can run these operands: float32 plain arrays on CPU, kernels available."""
    plain = all(isinstance(a, jax.Array) for a in (x, gate_up, down))
    return (plain and all(a.dtype == jnp.float32 for a in (x, gate_up, down))
            and x.ndim == 2 and gate_up.ndim == 3 and down.ndim == 3
            and usable_here())


def moe_experts(x, weights, experts, gate_up, down) -> jax.Array:
    """y [T, H] = Σ_k weights[t, k] · (silu(g) · u)(x[t] @ gate_up[e]) @ down[e], e = experts[t, k].

    x [T, H] f32; weights [T, K]; experts [T, K] int (indices into the stacks, clamped to range); gate_up
    [S, H, 2I] (gate = first I columns); down [S, I, H]. Slots with weight 0 are skipped. Each distinct expert's
    weights are read once, in place, by both CPU cores; the products are accumulated in float32 in a fixed
    order (same result on every call). Forward only: callers give it a gradient (``omni_jax.moe.gather``)."""
    if not available():
        raise RuntimeError("omni_jax.kernels: the CPU kernels are unavailable (no C++ compiler, a failed build, "
                           "or OMNI_JAX_CPU_KERNELS=0); use omni_jax.moe.gather.xla_gather_moe")
    return jax.lax.platform_dependent(x, weights.astype(jnp.float32), experts.astype(jnp.int32), gate_up, down,
                                      cpu=_kernel, default=moe_experts_xla)


def _kernel(x, weights, experts, gate_up, down):
    call = jax.ffi.ffi_call("OmniMoeExperts", jax.ShapeDtypeStruct(x.shape, jnp.float32),
                            vmap_method="sequential")
    return call(x, weights, experts, gate_up, down)


def moe_experts_xla(x, weights, experts, gate_up, down) -> jax.Array:
    """``moe_experts`` in XLA ops (what a program lowered for another platform runs): a ``lax.map`` over the
    T·K (token, slot) pairs, each reading its expert's weights by a dynamic index, so its temporaries are one
    expert's, whatever T is."""
    t, k = experts.shape
    e = jnp.clip(experts.astype(jnp.int32), 0, gate_up.shape[0] - 1).reshape(-1)

    def one(args):
        row, i = args
        g, u = jnp.split(row @ gate_up[i], 2)
        return (jax.nn.silu(g) * u) @ down[i]

    y = jax.lax.map(one, (jnp.repeat(x, k, axis=0), e)).reshape(t, k, -1)
    return jnp.einsum("tk,tkh->th", weights.astype(y.dtype), y)
