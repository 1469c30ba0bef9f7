"""Routing statistics returned beside the MoE output (fixed shapes, so they stack under ``lax.scan``).

``aux_loss`` is transformers' ``load_balancing_loss_func`` for one layer, on the raw router logits
(softmax → top-k with the config's k, padding excluded by the token mask exactly as the attention mask
does there). For several layers, HF pools the sums over layers before the product; ``aux_loss_over_layers``
does the same from stacked stats (the partial sums are kept for that reason).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from omni_jax.moe.router import Routing, RoutingConfig


@struct.dataclass
class MoEStats:
    counts: jax.Array  # [E] int32 assignments processed per expert (padding, dropped slots excluded)
    dropped: jax.Array  # [] int32 assignments dropped by the capacity limit
    entropy: jax.Array  # [] f32 mean over valid tokens of the routing distribution's entropy (nats)
    max_violation: jax.Array  # [] f32 max load / mean load over experts
    aux_loss: jax.Array  # [] f32 == load_balancing_loss_func(one layer)
    aux_expert_count: jax.Array  # [E] f32 masked top-k assignment counts of the raw router (for pooling)
    router_prob_sum: jax.Array  # [E] f32 masked sum of raw router softmax
    num_tokens: jax.Array  # [] f32 valid tokens
    router_logits: jax.Array | None = None  # [T, E] when requested
    top_k_experts: jax.Array | None = None  # [T, K]
    top_k_weights: jax.Array | None = None  # [T, K]


def partial_sums(r: Routing, routing: RoutingConfig, token_mask: jax.Array) -> dict:
    """Additive sufficient statistics over this shard's tokens (psum them across shards, then ``finalize``)."""
    E, K = routing.num_experts, routing.top_k
    m = token_mask.astype(jnp.float32)
    used = r.slot_valid & token_mask[:, None]
    counts = jnp.zeros((E,), jnp.int32).at[r.experts.reshape(-1)].add(used.reshape(-1).astype(jnp.int32))
    p = r.probs
    ent = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
    raw = jax.nn.softmax(r.logits.astype(jnp.float32), axis=-1)
    _, raw_idx = jax.lax.top_k(raw, K)
    aux_count = jnp.zeros((E,), jnp.float32).at[raw_idx.reshape(-1)].add(jnp.repeat(m, K))
    dropped = jnp.sum(r.dropped & token_mask[:, None])
    return dict(
        counts=counts,
        dropped=dropped.astype(jnp.int32),
        entropy_sum=jnp.sum(ent * m),
        aux_expert_count=aux_count,
        router_prob_sum=jnp.sum(raw * m[:, None], axis=0),
        num_tokens=jnp.sum(m),
    )


def finalize(s: dict, num_experts: int) -> MoEStats:
    n = jnp.maximum(s["num_tokens"], 1.0)
    counts = s["counts"]
    mean_load = jnp.sum(counts).astype(jnp.float32) / num_experts
    max_violation = jnp.where(mean_load > 0, jnp.max(counts).astype(jnp.float32) / jnp.maximum(mean_load, 1e-30), 0.0)
    aux = num_experts * jnp.sum((s["aux_expert_count"] / n) * (s["router_prob_sum"] / n))
    return MoEStats(
        counts=counts,
        dropped=s["dropped"],
        entropy=s["entropy_sum"] / n,
        max_violation=max_violation,
        aux_loss=aux,
        aux_expert_count=s["aux_expert_count"],
        router_prob_sum=s["router_prob_sum"],
        num_tokens=s["num_tokens"],
    )


def compute_stats(r: Routing, routing: RoutingConfig, token_mask: jax.Array, *, with_router_outputs=False) -> MoEStats:
    st = finalize(partial_sums(r, routing, token_mask), routing.num_experts)
    if with_router_outputs:
        st = st.replace(router_logits=r.logits, top_k_experts=r.experts, top_k_weights=r.weights)
    return st


def aux_loss_over_layers(stacked: MoEStats) -> jax.Array:
    """HF's multi-layer ``load_balancing_loss_func`` from stats stacked on a leading layer axis."""
    E = stacked.aux_expert_count.shape[-1]
    rows = jnp.sum(stacked.num_tokens)
    rows = jnp.maximum(rows, 1.0)
    tokens_per_expert = jnp.sum(stacked.aux_expert_count, axis=0) / rows
    prob_per_expert = jnp.sum(stacked.router_prob_sum, axis=0) / rows
    return E * jnp.sum(tokens_per_expert * prob_per_expert)
