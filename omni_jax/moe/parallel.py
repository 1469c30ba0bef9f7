"""Expert parallelism: the routed experts as a ``jax.shard_map`` whose specs come from the sharding rules.

The expert stacks ``gate_up`` [(L,) E, H, 2I] / ``down`` [(L,) E, I, H] enter the ``shard_map`` as they are
stored, specs derived from their declared logical axes (``omni_jax.moe.layout``) by ``omni_jax.sharding``:
experts split over ``expert``; the model width (FSDP-style) over ``fsdp`` and the expert MLP width over
``tensor``. Inside, each device indexes its layer (a traced ``layer`` when stacked) and all-gathers that
one layer of its local experts over ``fsdp`` / ``tensor`` (nothing to gather on an ``expert``-only mesh:
decode then reads the selected experts straight from the stacked weights). Every device of an
(fsdp, tensor) group then holds the same experts, so tokens are split over data × fsdp × tensor:

- ``psum`` (decode): every expert shard sees all tokens of its group; it routes them (full router), runs
  the assignments that fall on its own experts (the others get weight 0) and the partial outputs are
  ``psum``-ed over ``expert``.
- ``all_to_all`` (prefill): tokens are also split over ``expert``. Each device routes its tokens and packs
  every assignment into a send buffer [n_expert, C, H] by destination shard, with the worst-case capacity
  C = T_local · min(K, E_local) (a token cannot send more than that to one shard), so nothing is ever
  dropped; ``all_to_all`` there, run the local experts on the received rows, ``all_to_all`` back, combine
  with the routing weights at the source.

The router and the shared expert stay outside (the router's layer is sliced and replicated into the
``shard_map``; ``block.py`` adds the shared expert). ``ragged_all_to_all`` would avoid the padded buffers but
is unimplemented on CPU, hence the fixed capacity. Both paths are differentiable (``psum`` / ``all_to_all``
/ ``all_gather`` / scatter / gather all transpose), so the layer can be trained or distilled through.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from omni_jax.errors import UsageError
from omni_jax.moe.dispatch import choose_backend, get_backend, run_experts
from omni_jax.moe.experts import combine
from omni_jax.moe.gather import gather_selected_moe
from omni_jax.moe.layout import moe_axes
from omni_jax.moe.router import RoutingConfig, route
from omni_jax.moe.stats import MoEStats, finalize, partial_sums
from omni_jax.quant.weights import merge_leading, take_leading
from omni_jax.sharding import axis_size, logical_spec, weight_devices

PSUM_MAX_TOKENS = 8  # auto: up to this many tokens per token shard, every expert shard sees all tokens (decode)
TOKEN_AXES = ("data", "fsdp", "tensor")  # axes over which every device holds the same (gathered) experts


class ExpertParallelError(UsageError):
    """A mesh / expert count combination expert parallelism cannot use."""


def uses_parallel(mesh) -> bool:
    """Whether the mesh splits weights (so the routed experts run in the ``shard_map``)."""
    return mesh is not None and weight_devices(mesh) > 1


def _present(mesh, names) -> tuple[str, ...]:
    return tuple(a for a in names if axis_size(mesh, a) > 1)


def expert_param_specs(params: dict, mesh, stacked: bool = False) -> dict:
    """PartitionSpecs of MoE params (plain arrays or QuantizedWeight: one spec per leaf) from their axes."""
    out = {}
    for name, w in params.items():
        axes = moe_axes(name, stacked)
        out[name] = jax.tree.map(lambda leaf, name=name, axes=axes: logical_spec(axes, leaf.shape, mesh, name=name), w)
    return out


def moe_param_specs(params: dict, mesh) -> dict:
    """PartitionSpecs of a MoE param dict (stacked on a leading layer axis when ndim is one more)."""
    out = {}
    for name, w in params.items():
        ndim = len(jax.tree.leaves(w)[0].shape)
        stacked = ndim == len(moe_axes(name, False)) + 1
        out.update(expert_param_specs({name: w}, mesh, stacked))
    return out


def shard_moe_params(params: dict, mesh) -> dict:
    """``device_put`` MoE params with the specs their axes give on ``mesh``."""
    specs = moe_param_specs(params, mesh)
    return {k: jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), v, specs[k])
            for k, v in params.items()}


def _stat_spec():
    return MoEStats(counts=P(), dropped=P(), entropy=P(), max_violation=P(), aux_loss=P(),
                    aux_expert_count=P(), router_prob_sum=P(), num_tokens=P())


def _gather_dims(w, spec, first: int):
    """All-gather every dim from ``first`` on that ``spec`` splits (the leaves of a QuantizedWeight alike)."""
    def gather(leaf, s):
        for d, entry in enumerate(tuple(s)):
            if d >= first and entry is not None:
                leaf = jax.lax.all_gather(leaf, entry, axis=d, tiled=True)
        return leaf

    return jax.tree.map(gather, w, spec, is_leaf=lambda s: isinstance(s, P))


def _gather_layer(w, spec, layer, stacked: bool):
    """This device's experts of one layer, all-gathered over every mesh axis that splits their other dims."""
    if stacked:
        w = take_leading(w, layer)
        spec = jax.tree.map(lambda s: P(*tuple(s)[1:]), spec, is_leaf=lambda s: isinstance(s, P))

    return _gather_dims(w, spec, 1)  # dim 0 holds the experts: they stay local


def _needs_gather(spec, stacked: bool) -> bool:
    """Whether any dim past the (layers,) experts dims is split."""
    leaves = jax.tree.leaves(spec, is_leaf=lambda s: isinstance(s, P))
    return any(entry is not None for s in leaves for entry in tuple(s)[1 + stacked:])


def moe_block_parallel(xf, small: dict, gate_up, down, routing: RoutingConfig, *, mesh, token_mask=None,
                       backend="auto", layer=None, tile=None, with_router_outputs=False, ep_path="auto",
                       stacked=False):
    """The routed experts of ``moe_block`` on a mesh: xf [T, H] → (y [T, H], MoEStats). ``small`` holds this
    layer's router (and anything else, unused here); gate_up / down as stored (stacked when ``stacked``)."""
    n_exp = axis_size(mesh, "expert")
    E = routing.num_experts
    if E % n_exp:
        raise ExpertParallelError(f"num_experts {E} is not divisible by the expert axis size {n_exp}")
    if routing.capacity_factor is not None:
        raise ExpertParallelError("capacity_factor is applied over all tokens; run it without expert parallelism")
    T, H = xf.shape
    mask = jnp.ones((T,), bool) if token_mask is None else token_mask.reshape(T).astype(bool)
    group_axes = _present(mesh, TOKEN_AXES)
    n_group = 1
    for a in group_axes:
        n_group *= axis_size(mesh, a)
    if ep_path == "auto":
        ep_path = "psum" if -(-T // n_group) <= PSUM_MAX_TOKENS else "all_to_all"
    w_specs = expert_param_specs({"gate_up": gate_up, "down": down}, mesh, stacked)
    gather = _needs_gather(w_specs, stacked)
    data_axes = _present(mesh, ("data",))
    n_data = axis_size(mesh, "data")
    # decode on experts split over fsdp / tensor: the devices that gather each other's pieces of the selected
    # experts must have selected the same experts, so they hold the same tokens (split over data only)
    decode_gather = (ep_path == "psum" and gather
                     and (choose_backend(-(-T // n_data)) if backend == "auto" else backend) == "gather")
    if ep_path == "psum":
        token_axes = data_axes if decode_gather else group_axes
    elif ep_path == "all_to_all":
        token_axes = group_axes + _present(mesh, ("expert",))
    else:
        raise ExpertParallelError(f"unknown ep_path {ep_path!r} (auto, psum, all_to_all)")
    n_tok_shards = 1
    for a in token_axes:
        n_tok_shards *= axis_size(mesh, a)
    pad = (-T) % n_tok_shards
    if pad:  # padding tokens are masked out: they change nothing but the buffer sizes
        xf = jnp.concatenate([xf, jnp.zeros((pad, H), xf.dtype)])
        mask = jnp.concatenate([mask, jnp.zeros((pad,), bool)])
    tok = token_axes or None
    inner = _psum_path if ep_path == "psum" else _all_to_all_path
    has_expert_axis = "expert" in mesh.axis_names
    layer_arr = jnp.asarray(0 if layer is None else layer, jnp.int32)

    def body(xl, ml, router, w, layer_l):
        shard = jax.lax.axis_index("expert") if has_expert_axis else 0
        hook_layer = layer_l if layer is not None else None
        if decode_gather:  # gather only the selected experts' weights, not the whole layer's
            y, sums, r = _psum_selected(xl, ml, router, w, w_specs, routing, layer=hook_layer,
                                        w_layer=layer_l if stacked else None, n_exp=n_exp, shard=shard)
        elif gather and ep_path == "all_to_all":  # the layer's local experts gathered a chunk at a time
            y, sums, r = _all_to_all_path(xl, ml, router, w, routing, backend=backend, tile=tile, layer=hook_layer,
                                          w_layer=layer_l if stacked else None, n_exp=n_exp, shard=shard,
                                          specs=w_specs)
        else:
            if gather:
                w = {k: _gather_layer(v, w_specs[k], layer_l, stacked) for k, v in w.items()}
            w_layer = layer_l if (stacked and not gather) else None
            y, sums, r = inner(xl, ml, router, w, routing, backend=backend, tile=tile, layer=hook_layer,
                               w_layer=w_layer, n_exp=n_exp, shard=shard)
        if token_axes:
            sums = jax.tree.map(lambda s: jax.lax.psum(s, token_axes), sums)
        st = finalize(sums, E)
        extra = (r.logits, r.experts, r.weights) if with_router_outputs else ()
        return y, st, extra

    extra_specs = (P(tok), P(tok), P(tok)) if with_router_outputs else ()
    fn = jax.shard_map(body, mesh=mesh, in_specs=(P(tok, None), P(tok), P(), w_specs, P()),
                       out_specs=(P(tok, None), _stat_spec(), extra_specs), check_vma=False)
    y, stats, extra = fn(xf, mask, small["router"], {"gate_up": gate_up, "down": down}, layer_arr)
    if with_router_outputs:
        stats = stats.replace(router_logits=extra[0][:T], top_k_experts=extra[1][:T], top_k_weights=extra[2][:T])
    return y[:T], stats


def _local_slots(r, e_local, shard):
    lo = shard * e_local
    local = r.slot_valid & (r.experts >= lo) & (r.experts < lo + e_local)
    return local, jnp.clip(r.experts - lo, 0, e_local - 1)


def _experts_local(w, w_layer) -> int:
    return w["gate_up"].shape[1 if w_layer is not None else 0]


def _psum_path(xl, ml, router, w, routing, *, backend, tile, layer, w_layer, n_exp, shard):
    """Every expert shard holds the same tokens; each computes its own experts; psum over expert."""
    r = route(xl, router, routing, token_mask=ml, layer=layer)
    e_local = _experts_local(w, w_layer)
    local, local_idx = _local_slots(r, e_local, shard)
    w_local = jnp.where(local, r.weights, 0).astype(r.weights.dtype)
    y = run_experts(xl, w_local, local_idx, local, w["gate_up"], w["down"], backend=backend, tile=tile,
                    layer=w_layer)
    if n_exp > 1:
        y = jax.lax.psum(y, "expert")
    return y, partial_sums(r, routing, ml), r


def _psum_selected(xl, ml, router, w, w_specs, routing, *, layer, w_layer, n_exp, shard):
    """Decode on experts split over fsdp / tensor too: each device takes the T·K selected experts' pieces from
    its local stack, all-gathers just those, and runs them; psum over expert."""
    r = route(xl, router, routing, token_mask=ml, layer=layer)
    e_local = _experts_local(w, w_layer)
    local, local_idx = _local_slots(r, e_local, shard)
    w_local = jnp.where(local, r.weights, 0).astype(r.weights.dtype)
    idx = local_idx.reshape(-1)
    sel = {}
    for k, v in w.items():
        spec = w_specs[k]
        if w_layer is not None:  # [L, E_l, ...] -> rows layer * E_l + expert of the flattened stack
            v = merge_leading(v)
            idx_k = jnp.asarray(w_layer, jnp.int32) * e_local + idx
            spec = jax.tree.map(lambda s: P(*tuple(s)[1:]), spec, is_leaf=lambda s: isinstance(s, P))
        else:
            idx_k = idx
        sel[k] = _gather_dims(jax.tree.map(lambda a: jnp.take(a, idx_k, axis=0), v), spec, 1)
    y = gather_selected_moe(xl, w_local, r.experts, sel["gate_up"], sel["down"])
    if n_exp > 1:
        y = jax.lax.psum(y, "expert")
    return y, partial_sums(r, routing, ml), r


GATHER_CHUNK = 8  # local experts all-gathered at a time when prefill needs a layer's experts whole


def _slice_experts(w, layer, lo, n: int):
    """Experts [lo, lo + n) of one layer of a local stack ([L, E_l, ...] when ``layer`` is given, else [E_l, ...])."""
    def cut(a):
        if layer is None:
            return jax.lax.dynamic_slice_in_dim(a, lo, n, 0)
        start = (jnp.asarray(layer, jnp.int32), jnp.asarray(lo, jnp.int32)) + (0,) * (a.ndim - 2)
        return jax.lax.dynamic_slice(a, start, (1, n) + a.shape[2:])[0]

    return jax.tree.map(cut, w)


def _experts_in_chunks(x, e, v, w, specs, w_layer, e_local, name, tile):
    """Rows x [R, H] with local experts e [R, 1] (valid v): experts all-gathered ``GATHER_CHUNK`` at a time
    (a scan), each chunk's rows computed with the chunk's weights. Each row has one expert, so the sum over
    chunks adds only zeros to it: the result is exactly the unchunked one."""
    chunk = GATHER_CHUNK if e_local % GATHER_CHUNK == 0 else e_local
    strip = (lambda s: P(*tuple(s)[1:])) if w_layer is not None else (lambda s: s)
    specs = {k: jax.tree.map(strip, s, is_leaf=lambda t: isinstance(t, P)) for k, s in specs.items()}
    rows = x.shape[0]
    fn = get_backend(name, rows, tile=tile)
    ones = jnp.ones((rows, 1), x.dtype)

    def body(y, c):
        lo = c * chunk
        wc = {k: _gather_dims(_slice_experts(w[k], w_layer, lo, chunk), specs[k], 1) for k in ("gate_up", "down")}
        inside = v & (e >= lo) & (e < lo + chunk)
        yc = fn(x, ones, jnp.clip(e - lo, 0, chunk - 1), inside, wc["gate_up"], wc["down"])
        return y + jnp.where(inside, yc, 0).astype(y.dtype), None

    y, _ = jax.lax.scan(body, jnp.zeros(x.shape, x.dtype), jnp.arange(e_local // chunk))
    return y


def _all_to_all_path(xl, ml, router, w, routing, *, backend, tile, layer, w_layer, n_exp, shard, specs=None):
    """Fixed worst-case-capacity all_to_all to the experts' shards and back. ``specs`` given: the local experts
    are split over fsdp / tensor too and are gathered a chunk at a time (``_experts_in_chunks``)."""
    Tl, H = xl.shape
    K = routing.top_k
    r = route(xl, router, routing, token_mask=ml, layer=layer)
    e_local = _experts_local(w, w_layer)
    gate_up, down = w["gate_up"], w["down"]
    if w_layer is not None and specs is None:  # prefill reads every local expert of the layer anyway
        gate_up, down = take_leading(gate_up, w_layer), take_leading(down, w_layer)
    cap = Tl * min(K, e_local)  # worst case: every token sends all the slots it can to one shard
    valid = r.slot_valid.reshape(-1)
    dest = (r.experts // e_local).reshape(-1)  # [A] destination shard
    onehot = jax.nn.one_hot(dest, n_exp, dtype=jnp.int32) * valid[:, None]
    pos = jnp.take_along_axis(jnp.cumsum(onehot, axis=0) - onehot, dest[:, None], axis=1)[:, 0]
    pos = jnp.where(valid, pos, cap)  # invalid assignments are not sent (index out of range → dropped)
    token_of = jnp.arange(Tl * K) // K
    send_x = jnp.zeros((n_exp, cap, H), xl.dtype).at[dest, pos].set(xl[token_of], mode="drop")
    send_e = jnp.zeros((n_exp, cap), jnp.int32).at[dest, pos].set(r.experts.reshape(-1) % e_local, mode="drop")
    send_v = jnp.zeros((n_exp, cap), bool).at[dest, pos].set(valid, mode="drop")
    if n_exp > 1:
        send_x, send_e, send_v = (jax.lax.all_to_all(a, "expert", 0, 0) for a in (send_x, send_e, send_v))
    rows = n_exp * cap
    ones = jnp.ones((rows, 1), xl.dtype)
    name = choose_backend(rows) if backend == "auto" else backend
    fn = get_backend(name, rows, tile=tile)
    if specs is not None:
        y_rows = _experts_in_chunks(send_x.reshape(rows, H), send_e.reshape(rows, 1), send_v.reshape(rows, 1), w,
                                    specs, w_layer, e_local, name, tile)
    else:
        y_rows = fn(send_x.reshape(rows, H), ones, send_e.reshape(rows, 1), send_v.reshape(rows, 1), gate_up, down)
    y_rows = jnp.where(send_v.reshape(rows, 1), y_rows, 0)
    back = y_rows.reshape(n_exp, cap, H)
    if n_exp > 1:
        back = jax.lax.all_to_all(back, "expert", 0, 0)
    per_slot = back.at[dest, pos].get(mode="fill", fill_value=0).reshape(Tl, K, H)
    y = combine(per_slot, r.weights, r.experts)
    return y, partial_sums(r, routing, ml), r
