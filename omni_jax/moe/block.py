"""``moe_block``: router + dispatch (+ the Talker's sigmoid-gated shared expert) + statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from omni_jax.moe.dispatch import choose_backend, get_backend
from omni_jax.moe.experts import round_to_dtype, swiglu
from omni_jax.moe.router import RoutingConfig, route
from omni_jax.moe.stats import MoEStats, compute_stats
from omni_jax.quant.weights import merge_leading, take_leading


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
    backend: "auto" | "dense" | "gather" | "tiles" | "ragged". mesh: a Mesh with an "expert" axis →
    expert-parallel (``parallel.py``; quantized experts work there too). layer: this layer's index (may
    be traced) for per-layer hooks. with_router_outputs: also return the router logits and the top-k
    experts / weights in the stats. ep_path (with a mesh): "auto" | "psum"
    (decode: every expert shard sees all tokens) | "all_to_all" (prefill: fixed worst-case capacity).
    stacked: the params carry a leading layer axis (router [L, H, E], gate_up [L, E, H, 2I], ...) and
    ``layer`` picks the layer. The decoder scan uses this so that decode reads only the selected experts
    straight from the stacked weights: slicing one layer's weights out of the stack first makes XLA:CPU
    copy all 128 experts of that layer on every step.
    """
    if stacked:
        params, gate_up, down = _layer_params(params, layer)
    else:
        gate_up, down = params["gate_up"], params["down"]
    if mesh is not None and mesh.shape.get("expert", 1) > 1:
        from omni_jax.moe.parallel import moe_block_parallel

        if stacked:
            params = dict(params, gate_up=_take_layer(gate_up, layer), down=_take_layer(down, layer))
        return moe_block_parallel(x, params, routing, token_mask=token_mask, backend=backend, mesh=mesh,
                                  layer=layer, tile=tile, with_router_outputs=with_router_outputs,
                                  ep_path=ep_path)
    lead, H = x.shape[:-1], x.shape[-1]
    xf = x.reshape(-1, H)
    T = xf.shape[0]
    mask = jnp.ones((T,), bool) if token_mask is None else token_mask.reshape(T).astype(bool)
    r = route(xf, params["router"], routing, token_mask=mask, layer=layer)
    name = choose_backend(T) if backend == "auto" else backend
    fn = get_backend(name, T, tile=tile)
    if stacked and name == "gather":
        # index [layer * E + expert] in the flattened stack: only the chosen experts are read
        E = gate_up.shape[1]
        offset = jnp.asarray(layer, jnp.int32) * E
        y = fn(xf, r.weights, r.experts + offset, r.slot_valid, merge_leading(gate_up), merge_leading(down))
    else:
        if stacked:
            gate_up, down = _take_layer(gate_up, layer), _take_layer(down, layer)
        y = fn(xf, r.weights, r.experts, r.slot_valid, gate_up, down)
    if "shared_gate_up" in params:
        y = round_to_dtype(y + shared_expert(xf, params), x.dtype)
    stats = compute_stats(r, routing, mask, with_router_outputs=with_router_outputs)
    return y.reshape(*lead, H).astype(x.dtype), stats


def _take_layer(a, layer):
    """Layer ``layer`` of a stacked param (a plain array or a ``QuantizedWeight``)."""
    return take_leading(a, layer)


def _layer_params(params: dict, layer) -> tuple[dict, jax.Array, jax.Array]:
    """The small per-layer params sliced out; the expert stacks returned whole."""
    small = {k: _take_layer(v, layer) for k, v in params.items() if k not in ("gate_up", "down")}
    return small, params["gate_up"], params["down"]
