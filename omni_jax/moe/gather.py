"""Gather the selected experts' weights (decode): reads only the T·K chosen experts, bandwidth-bound.

A ``lax.map`` over the T·K (token, expert) pairs multiplies each token row by its expert's weights read
with a dynamic index. (Gathering all K experts into one [T, K, H, 2I] tensor first and contracting it with
an einsum copies the weights and was ~6x slower on CPU.) Work grows with T·K whole experts, so ``auto``
uses it only for a handful of tokens.

On CPU in float32 the forward pass runs the ``omni_jax.kernels.moe_experts`` kernel instead: XLA:CPU copies
each dynamically indexed expert before its dot reads it (~8 GB/s), the kernel reads the experts in place
(one real-width Thinker MoE decode, 8 of 128 experts: 17.4 → 6.1 ms, 25 GB/s). Gradients go through the
``lax.map`` maths (a few slots) or the ``tiles`` backend's (more). ``OMNI_JAX_CPU_KERNELS=0`` keeps the XLA
path everywhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from omni_jax.kernels.moe import moe_experts, moe_experts_usable
from omni_jax.moe.experts import combine, expert_weight, swiglu
from omni_jax.moe.tiles import tiles_moe


def gather_moe(x, weights, experts, valid, gate_up, down):
    del valid  # invalid slots have weight 0
    if moe_experts_usable(x, gate_up, down):
        return _experts_in_place(x, weights, experts, gate_up, down)
    return xla_gather_moe(x, weights, experts, gate_up, down)


@jax.custom_vjp
def _experts_in_place(x, weights, experts, gate_up, down):
    return moe_experts(x, weights, experts, gate_up, down).astype(x.dtype)


def _experts_in_place_fwd(x, weights, experts, gate_up, down):
    return _experts_in_place(x, weights, experts, gate_up, down), (x, weights, experts, gate_up, down)


def _experts_in_place_bwd(res, g):
    x, weights, experts, gate_up, down = res
    if experts.size <= 16:
        reference = xla_gather_moe
    else:  # many slots: the sorted tiles' gradient (the lax.map's carries a whole-stack cotangent per slot)
        def reference(x_, w_, e_, gu_, dn_):
            return tiles_moe(x_, w_, e_, jnp.ones(e_.shape, bool), gu_, dn_)
    _, vjp = jax.vjp(lambda x_, w_, gu_, dn_: reference(x_, w_, experts, gu_, dn_), x, weights, gate_up, down)
    gx, gw, ggu, gdn = vjp(g)
    return gx, gw, None, ggu, gdn


_experts_in_place.defvjp(_experts_in_place_fwd, _experts_in_place_bwd)


def xla_gather_moe(x, weights, experts, gate_up, down):
    """``gather_moe`` in XLA ops only (a ``lax.map`` over the T·K slots)."""
    T, K = experts.shape
    rows = jnp.repeat(x, K, axis=0)  # [T·K, H]

    def one(args):
        xr, e = args
        return swiglu(xr[None] @ expert_weight(gate_up, e, x.dtype)) @ expert_weight(down, e, x.dtype)

    y = jax.lax.map(one, (rows, experts.reshape(-1)))  # [T·K, 1, H]
    return combine(y.reshape(T, K, -1), weights, experts)


def gather_selected_moe(x, weights, experts, gate_up_sel, down_sel):
    """``gather_moe`` with each (token, slot)'s expert weights already selected: gate_up_sel [T·K, H, 2I],
    down_sel [T·K, I, H] (row t·K + k is token t's k-th expert). ``experts`` [T, K] only orders the sum."""
    T, K = experts.shape
    rows = jnp.repeat(x, K, axis=0)

    def one(args):
        xr, s = args
        return swiglu(xr[None] @ expert_weight(gate_up_sel, s, x.dtype)) @ expert_weight(down_sel, s, x.dtype)

    y = jax.lax.map(one, (rows, jnp.arange(T * K)))
    return combine(y.reshape(T, K, -1), weights, experts)
