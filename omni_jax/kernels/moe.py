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
                                      cpu=_kernel, default=_xla)


def _kernel(x, weights, experts, gate_up, down):
    call = jax.ffi.ffi_call("OmniMoeExperts", jax.ShapeDtypeStruct(x.shape, jnp.float32),
                            vmap_method="sequential")
    return call(x, weights, experts, gate_up, down)


def _xla(x, weights, experts, gate_up, down):
    """The same sums in XLA ops (programs lowered for other platforms)."""
    e = jnp.clip(experts, 0, gate_up.shape[0] - 1)
    h = jnp.einsum("th,tkhi->tki", x, gate_up[e])
    g, u = jnp.split(h, 2, axis=-1)
    o = jnp.einsum("tki,tkih->tkh", jax.nn.silu(g) * u, down[e])
    return jnp.einsum("tk,tkh->th", weights, o)
