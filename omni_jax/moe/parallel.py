"""Expert parallelism with ``jax.shard_map`` over an ``expert`` mesh axis (a ``data`` axis beside it).

Each device holds E / n_expert experts (``gate_up``/``down`` sharded on their expert axis); the router and the
shared expert are replicated. Two paths, same result as the single-device block:

- ``psum`` (decode): tokens are split over ``data`` only, so every expert shard sees all of its data
  group's tokens; it routes them (full router), runs the assignments that fall on its own experts (the
  others get weight 0) and the partial outputs are ``psum``-ed over ``expert``.
- ``all_to_all`` (prefill): tokens are split over ``data`` × ``expert``. Each device routes its tokens and
  packs every assignment into a send buffer [n_expert, C, H] by destination shard, with the worst-case
  capacity C = T_local · min(K, E_local) (a token cannot send more than that to one shard), so nothing is
  ever dropped; ``all_to_all`` there, run the local experts on the received rows, ``all_to_all`` back,
  combine with the routing weights at the source.

``ragged_all_to_all`` would avoid the padded buffers but is unimplemented on CPU, hence the fixed capacity.
Both paths are differentiable (``psum`` / ``all_to_all`` / scatter / gather all transpose), so the layer
can be trained or distilled through.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from omni_jax.errors import UsageError
from omni_jax.moe.dispatch import choose_backend, get_backend
from omni_jax.moe.experts import combine, round_to_dtype
from omni_jax.moe.router import RoutingConfig, route
from omni_jax.moe.stats import MoEStats, finalize, partial_sums

PSUM_MAX_TOKENS = 8  # auto: up to this many tokens per data shard, every shard sees all tokens (decode)


class ExpertParallelError(UsageError):
    """A mesh / expert count combination expert parallelism cannot use."""


def _axis(mesh, name):
    return name if name in mesh.axis_names and mesh.shape[name] > 1 else None


def _stat_spec():
    return MoEStats(counts=P(), dropped=P(), entropy=P(), max_violation=P(), aux_loss=P(),
                    aux_expert_count=P(), router_prob_sum=P(), num_tokens=P())


def moe_block_parallel(x, params, routing: RoutingConfig, *, token_mask=None, backend="auto", mesh,
                       layer=None, tile=None, with_router_outputs=False, ep_path="auto"):
    from omni_jax.moe.block import shared_expert

    n_exp = mesh.shape["expert"]
    E, K = routing.num_experts, routing.top_k
    if E % n_exp:
        raise ExpertParallelError(f"num_experts {E} is not divisible by the expert axis size {n_exp}")
    if routing.capacity_factor is not None:
        raise ExpertParallelError("capacity_factor is applied over all tokens; run it without expert parallelism")
    lead, H = x.shape[:-1], x.shape[-1]
    xf = x.reshape(-1, H)
    T = xf.shape[0]
    mask = jnp.ones((T,), bool) if token_mask is None else token_mask.reshape(T).astype(bool)
    data = _axis(mesh, "data")
    n_data = mesh.shape[data] if data else 1
    if ep_path == "auto":
        ep_path = "psum" if -(-T // n_data) <= PSUM_MAX_TOKENS else "all_to_all"
    if ep_path == "psum":
        token_axes = (data,) if data else ()
    elif ep_path == "all_to_all":
        token_axes = tuple(a for a in (data, "expert") if a)
    else:
        raise ExpertParallelError(f"unknown ep_path {ep_path!r} (auto, psum, all_to_all)")
    n_tok_shards = 1
    for a in token_axes:
        n_tok_shards *= mesh.shape[a]
    pad = (-T) % n_tok_shards
    if pad:  # padding tokens are masked out: they change nothing but the buffer sizes
        xf = jnp.concatenate([xf, jnp.zeros((pad, H), xf.dtype)])
        mask = jnp.concatenate([mask, jnp.zeros((pad,), bool)])
    tok_spec = P(token_axes if token_axes else None)
    expert_params = {k: params[k] for k in ("router", "gate_up", "down")}
    param_specs = {"router": P(), "gate_up": P("expert"), "down": P("expert")}
    inner = _psum_path if ep_path == "psum" else _all_to_all_path

    def body(xl, ml, p):
        y, sums, r = inner(xl, ml, p, routing, backend=backend, tile=tile, layer=layer, n_exp=n_exp)
        reduce_axes = tuple(token_axes)
        if reduce_axes:
            sums = jax.tree.map(lambda s: jax.lax.psum(s, reduce_axes), sums)
        st = finalize(sums, E)
        extra = (r.logits, r.experts, r.weights) if with_router_outputs else ()
        return y, st, extra

    extra_specs = (P(token_axes or None), P(token_axes or None), P(token_axes or None)) if with_router_outputs else ()
    fn = jax.shard_map(body, mesh=mesh, in_specs=(P(token_axes or None, None), tok_spec, param_specs),
                       out_specs=(P(token_axes or None, None), _stat_spec(), extra_specs), check_vma=False)
    y, stats, extra = fn(xf, mask, expert_params)
    if with_router_outputs:
        stats = stats.replace(router_logits=extra[0][:T], top_k_experts=extra[1][:T], top_k_weights=extra[2][:T])
    y = y[:T]
    if "shared_gate_up" in params:
        y = round_to_dtype(y + shared_expert(xf[:T], params), x.dtype)
    return y.reshape(*lead, H).astype(x.dtype), stats


def _local_slots(r, e_local, shard):
    lo = shard * e_local
    local = r.slot_valid & (r.experts >= lo) & (r.experts < lo + e_local)
    return local, jnp.clip(r.experts - lo, 0, e_local - 1)


def _psum_path(xl, ml, p, routing, *, backend, tile, layer, n_exp):
    """Every expert shard holds the same tokens; each computes its own experts; psum over expert."""
    r = route(xl, p["router"], routing, token_mask=ml, layer=layer)
    e_local = p["gate_up"].shape[0]
    local, local_idx = _local_slots(r, e_local, jax.lax.axis_index("expert"))
    w_local = jnp.where(local, r.weights, 0).astype(r.weights.dtype)
    fn = get_backend(backend, xl.shape[0], tile=tile)
    y = fn(xl, w_local, local_idx, local, p["gate_up"], p["down"])
    y = jax.lax.psum(y, "expert")
    return y, partial_sums(r, routing, ml), r


def _all_to_all_path(xl, ml, p, routing, *, backend, tile, layer, n_exp):
    """Fixed worst-case-capacity all_to_all to the experts' shards and back."""
    Tl, H = xl.shape
    K = routing.top_k
    r = route(xl, p["router"], routing, token_mask=ml, layer=layer)
    e_local = p["gate_up"].shape[0]
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
    recv_x = jax.lax.all_to_all(send_x, "expert", 0, 0)
    recv_e = jax.lax.all_to_all(send_e, "expert", 0, 0)
    recv_v = jax.lax.all_to_all(send_v, "expert", 0, 0)
    rows = n_exp * cap
    ones = jnp.ones((rows, 1), xl.dtype)
    name = choose_backend(rows) if backend == "auto" else backend
    fn = get_backend(name, rows, tile=tile)
    y_rows = fn(recv_x.reshape(rows, H), ones, recv_e.reshape(rows, 1), recv_v.reshape(rows, 1),
                p["gate_up"], p["down"])
    y_rows = jnp.where(recv_v.reshape(rows, 1), y_rows, 0)
    back = jax.lax.all_to_all(y_rows.reshape(n_exp, cap, H), "expert", 0, 0)
    per_slot = back.at[dest, pos].get(mode="fill", fill_value=0).reshape(Tl, K, H)
    y = combine(per_slot, r.weights, r.experts)
    return y, partial_sums(r, routing, ml), r
