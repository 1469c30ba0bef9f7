"""``moe_block``: router + dispatch (+ the Talker's sigmoid-gated shared expert) + statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from omni_jax.moe.dispatch import run_experts
from omni_jax.moe.experts import round_to_dtype, swiglu
from omni_jax.moe.layout import MOE_AXES, is_expert_stack
from omni_jax.moe.parallel import moe_block_parallel, uses_parallel
from omni_jax.moe.router import RoutingConfig, route
from omni_jax.moe.stats import MoEStats, compute_stats
from omni_jax.quant.weights import take_leading
from omni_jax.sharding import context_mesh

# the params indexed by expert inside the dispatch backends: those whose declared axes stack expert matrices
EXPERT_STACKS = tuple(name for name, axes in MOE_AXES.items() if is_expert_stack(axes))


def shared_expert(x: jax.Array, params: dict) -> jax.Array:
    """sigmoid(x @ shared_gate) * down(silu(gate(x)) * up(x)) (``Qwen3OmniMoeTalkerTextSparseMoeBlock``)."""
    dt = x.dtype
    s = round_to_dtype(swiglu(x @ params["shared_gate_up"].astype(dt)) @ params["shared_down"].astype(dt), dt)
    logit = round_to_dtype(x @ params["shared_gate"].astype(dt), dt)
    gate = round_to_dtype(jax.nn.sigmoid(logit.astype(jnp.float32)), dt)
    return round_to_dtype(gate * s, dt)


def moe_block(
    x: jax.Array,
    params: dict,
    routing: RoutingConfig,
    *,
    token_mask: jax.Array | None = None,
    backend: str = "auto",
    mesh=None,
    layer=None,
    tile: int | None = None,
    with_router_outputs: bool = False,
    ep_path: str = "auto",
    stacked: bool = False,
) -> tuple[jax.Array, MoEStats]:
    """x [..., H] → (y [..., H] in x.dtype, MoEStats).

    params: "router" [H, E], "gate_up" [E, H, 2I], "down" [E, I, H] (plain arrays or ``omni_jax.quant``
    QuantizedWeight: each expert's slice is dequantized right before its matmul); optionally
    "shared_gate_up" [H, 2S], "shared_down" [S, H], "shared_gate" [H, 1]. token_mask [...] bool: False =
    padding (excluded from the statistics and from capacity; its output is finite but meaningless).
    backend: "auto" | "dense" | "gather" | "tiles" | "ragged". mesh: the device mesh (default: the one set
    with ``jax.set_mesh``); when its axes split the weights (fsdp / expert / tensor) the routed experts run
    expert-parallel (``parallel.py``; quantized experts work there too). layer: this layer's index (may be
    traced) for per-layer hooks. with_router_outputs: also return the router logits and the top-k experts /
    weights in the stats. ep_path (expert-parallel): "auto" | "psum" (decode: every expert shard sees all
    tokens) | "all_to_all" (prefill: fixed worst-case capacity).
    stacked: the params carry a leading layer axis (router [L, H, E], gate_up [L, E, H, 2I], ...) and
    ``layer`` picks the layer. The expert stacks are never sliced per layer before use: decode reads only the
    selected experts straight from the stacks (on a mesh too: the stacks enter the ``shard_map`` whole).
    """
    small = {k: (take_leading(v, layer) if stacked else v) for k, v in params.items() if k not in EXPERT_STACKS}
    lead, H = x.shape[:-1], x.shape[-1]
    xf = x.reshape(-1, H)
    mesh = context_mesh() if mesh is None else mesh
    if uses_parallel(mesh):
        y, stats = moe_block_parallel(xf, small, params["gate_up"], params["down"], routing, mesh=mesh,
                                      token_mask=token_mask, backend=backend, layer=layer, tile=tile,
                                      with_router_outputs=with_router_outputs, ep_path=ep_path, stacked=stacked)
    else:
        T = xf.shape[0]
        mask = jnp.ones((T,), bool) if token_mask is None else token_mask.reshape(T).astype(bool)
        r = route(xf, small["router"], routing, token_mask=mask, layer=layer)
        y = run_experts(xf, r.weights, r.experts, r.slot_valid, params["gate_up"], params["down"], backend=backend,
                        tile=tile, layer=layer if stacked else None)
        stats = compute_stats(r, routing, mask, with_router_outputs=with_router_outputs)
    if "shared_gate_up" in small:
        y = round_to_dtype(y + shared_expert(xf, small), x.dtype)
    return y.reshape(*lead, H).astype(x.dtype), stats
