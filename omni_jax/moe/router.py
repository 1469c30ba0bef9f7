"""The MoE router as a pure function, with routing-research hooks passed as static configuration.

Reference semantics (HF ``Qwen3OmniMoe*TopKRouter``)::

    logits = x @ W                       # activation dtype
    probs  = softmax(float32(logits))
    w, idx = top_k(probs, k)             # sorted descending
    w      = w / sum(w)  if norm_topk_prob
    w      = w.astype(x.dtype)

Hooks (all neutral by default, so the default config is exactly the reference):
- ``top_k`` override (``routing.replace(top_k=...)``), or per layer with ``top_k_per_layer`` + ``layer=``;
- ``top_p``: keep the fewest experts whose probability mass reaches p, at most ``top_k`` (static shapes:
  slots past the dynamic count get weight 0 and ``slot_valid`` False);
- ``expert_keep_mask``: pruned experts are never chosen; the softmax runs over the kept experts only (the
  rest renormalised); per layer with ``expert_keep_mask_per_layer``;
- ``temperature`` (logits / T) and an additive ``bias`` on the logits (``bias_selection_only``: the bias
  changes which experts are picked but not their weights, DeepSeek-V3 style);
- ``random_seed``: experts chosen uniformly at random (distinct per token; seeded, folded with the layer
  index); weights are the router probabilities of the chosen experts (renormalised if norm_topk_prob);
- ``capacity_factor``: at most ceil(cf * T * k / E) assignments per expert, filled first-choice-first in
  token order; the rest are dropped (weight 0, no renormalisation, Switch-Transformer style).
  None (the default) is dropless.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from omni_jax.errors import UsageError
from omni_jax.moe.experts import round_to_dtype


class RoutingError(UsageError):
    """A routing configuration that cannot work (k out of range, wrong mask length, ...)."""


@dataclass(frozen=True)
class RoutingConfig:
    """Routing of one MoE layer. ``num_experts``, ``top_k`` and ``norm_topk_prob`` may be left None: such a
    partial config (e.g. ``RoutingConfig(top_k=4)``) takes the model's values in ``for_model``; a config built
    with ``num_experts`` and no ``norm_topk_prob`` normalises (True)."""

    num_experts: int | None = None
    top_k: int | None = None
    norm_topk_prob: bool | None = None
    top_p: float | None = None
    expert_keep_mask: tuple[bool, ...] | None = None
    temperature: float = 1.0
    bias: tuple[float, ...] | None = None
    bias_selection_only: bool = False
    random_seed: int | None = None
    capacity_factor: float | None = None
    top_k_per_layer: tuple[int, ...] | None = None
    expert_keep_mask_per_layer: tuple[tuple[bool, ...], ...] | None = None

    def __post_init__(self):
        E = self.num_experts
        if E is not None and self.norm_topk_prob is None:
            object.__setattr__(self, "norm_topk_prob", True)
        if E is None:
            if self.top_k is not None and self.top_k < 1:
                raise RoutingError(f"top_k {self.top_k} must be >= 1")
        elif self.top_k is None:
            raise RoutingError("a routing config with num_experts needs top_k")
        elif not 1 <= self.top_k <= E:
            raise RoutingError(f"top_k {self.top_k} outside 1..num_experts={E}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise RoutingError(f"top_p {self.top_p} outside (0, 1]")
        for name in ("expert_keep_mask", "bias"):
            v = getattr(self, name)
            if v is not None and E is not None and len(v) != E:
                raise RoutingError(f"{name} has {len(v)} entries, expected num_experts={E}")
        if self.expert_keep_mask is not None and not any(self.expert_keep_mask):
            raise RoutingError("expert_keep_mask prunes every expert")
        if self.temperature <= 0:
            raise RoutingError(f"temperature {self.temperature} must be > 0")
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise RoutingError(f"capacity_factor {self.capacity_factor} must be > 0")
        if self.top_k_per_layer is not None and any(not 1 <= k <= (self.top_k or k) for k in self.top_k_per_layer):
            raise RoutingError(f"top_k_per_layer {self.top_k_per_layer} must lie in 1..top_k={self.top_k} "
                               "(top_k is the static maximum)")
        if self.expert_keep_mask_per_layer is not None:
            for m in self.expert_keep_mask_per_layer:
                if (E is not None and len(m) != E) or not any(m):
                    raise RoutingError("each expert_keep_mask_per_layer row needs num_experts entries, one kept")

    @classmethod
    def from_text_config(cls, cfg, **hooks) -> "RoutingConfig":
        """From an ``omni_jax.config.TextConfig`` (thinker or talker text model) plus any hooks."""
        base = dict(num_experts=cfg.num_experts, top_k=cfg.top_k, norm_topk_prob=cfg.norm_topk_prob)
        base.update(hooks)
        return cls(**base)

    def replace(self, **changes) -> "RoutingConfig":
        return dataclasses.replace(self, **changes)

    def for_model(self, cfg) -> "RoutingConfig":
        """This config on a model (an ``omni_jax.config.TextConfig``): the fields left None take the model's
        values, and everything is checked against the model's expert count."""
        if self.num_experts is not None and self.num_experts != cfg.num_experts:
            raise RoutingError(f"the routing config is for {self.num_experts} experts, the model has {cfg.num_experts}")
        return dataclasses.replace(self, num_experts=cfg.num_experts,
                                   top_k=cfg.top_k if self.top_k is None else self.top_k,
                                   norm_topk_prob=cfg.norm_topk_prob if self.norm_topk_prob is None
                                   else self.norm_topk_prob)

    @property
    def is_reference(self) -> bool:
        """True when no hook changes the reference routing."""
        neutral = RoutingConfig(self.num_experts, self.top_k, self.norm_topk_prob)
        return self == neutral

    def capacity(self, num_tokens: int) -> int | None:
        if self.capacity_factor is None:
            return None
        return max(1, math.ceil(self.capacity_factor * num_tokens * self.top_k / self.num_experts))


class Routing(NamedTuple):
    """What the router decided for T tokens (K = routing.top_k, the static maximum)."""

    weights: jax.Array  # [T, K] x.dtype, 0 for dropped / unused slots
    experts: jax.Array  # [T, K] int32
    slot_valid: jax.Array  # [T, K] bool: slot carries a real assignment (False: top-p/keep-mask/capacity drop)
    logits: jax.Array  # [T, E] raw router logits x @ W (activation dtype), before any hook
    probs: jax.Array  # [T, E] float32 softmax of the hooked logits (what selection used)
    dropped: jax.Array  # [T, K] bool: assignment removed by the capacity limit


def router_logits(x: jax.Array, w_router: jax.Array) -> jax.Array:
    """x [T, H] @ W [H, E] in the activation dtype (as F.linear in the reference; rounding pinned, see experts.py)."""
    return round_to_dtype(jnp.einsum("th,he->te", x, w_router.astype(x.dtype)), x.dtype)


def route(
    x: jax.Array,
    w_router: jax.Array,
    routing: RoutingConfig,
    *,
    token_mask: jax.Array | None = None,
    layer: jax.Array | int | None = None,
) -> Routing:
    """Route T tokens x [T, H]. ``layer`` (may be traced) selects per-layer hooks and folds the random seed."""
    if routing.num_experts is None or routing.top_k is None:
        raise RoutingError("a partial routing config (num_experts or top_k left None) must be completed with "
                           "RoutingConfig.for_model(text_cfg) before routing")
    T = x.shape[0]
    E, K = routing.num_experts, routing.top_k
    logits = router_logits(x, w_router)
    z = logits.astype(jnp.float32)
    if routing.temperature != 1.0:
        z = z / routing.temperature
    keep = _keep_mask(routing, layer)
    sel_bias = None
    if routing.bias is not None:
        b = jnp.asarray(routing.bias, jnp.float32)
        if routing.bias_selection_only:
            sel_bias = b
        else:
            z = z + b
    if keep is not None:
        z = jnp.where(keep, z, -jnp.inf)
    probs = jax.nn.softmax(z, axis=-1)

    if routing.random_seed is not None:
        key = jax.random.PRNGKey(routing.random_seed)
        if layer is not None:
            key = jax.random.fold_in(key, layer)
        score = jax.random.uniform(key, (T, E))
        if keep is not None:
            score = jnp.where(keep, score, -1.0)
        _, idx = jax.lax.top_k(score, K)
        w = jnp.take_along_axis(probs, idx, axis=-1)
    elif sel_bias is not None:
        score = probs + sel_bias
        if keep is not None:
            score = jnp.where(keep, score, -jnp.inf)
        _, idx = jax.lax.top_k(score, K)
        w = jnp.take_along_axis(probs, idx, axis=-1)
    else:
        w, idx = jax.lax.top_k(probs, K)

    valid = jnp.ones((T, K), bool)
    if keep is not None:  # fewer kept experts than K: the extra slots hold pruned experts
        valid &= jnp.take(keep, idx)
    if routing.top_k_per_layer is not None and layer is not None:
        k_now = jnp.asarray(routing.top_k_per_layer, jnp.int32)[layer]
        valid &= jnp.arange(K)[None, :] < k_now
    elif routing.top_k_per_layer is not None:
        raise RoutingError("top_k_per_layer needs the layer index (route(..., layer=i))")
    if routing.top_p is not None:
        # keep slot j while the mass of the slots before it is still below p (slot 0 always kept)
        ordered = jnp.where(valid, w, 0.0)
        mass_before = jnp.cumsum(ordered, axis=-1) - ordered
        valid &= mass_before < routing.top_p
    w = jnp.where(valid, w, 0.0)
    if routing.norm_topk_prob:
        w = w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    dropped = jnp.zeros((T, K), bool)
    if routing.capacity_factor is not None:
        tm = jnp.ones((T,), bool) if token_mask is None else token_mask.reshape(T).astype(bool)
        fits = _within_capacity(idx, valid & tm[:, None], E, routing.capacity(T))
        dropped = valid & tm[:, None] & ~fits
        valid &= fits
        w = jnp.where(valid, w, 0.0)
    w = round_to_dtype(w, x.dtype)
    return Routing(w, idx.astype(jnp.int32), valid, logits, probs, dropped)


def _keep_mask(routing: RoutingConfig, layer) -> jax.Array | None:
    keep = None
    if routing.expert_keep_mask is not None:
        keep = jnp.asarray(routing.expert_keep_mask, bool)
    if routing.expert_keep_mask_per_layer is not None:
        if layer is None:
            raise RoutingError("expert_keep_mask_per_layer needs the layer index (route(..., layer=i))")
        per = jnp.asarray(routing.expert_keep_mask_per_layer, bool)[layer]
        keep = per if keep is None else keep & per
    return keep


def _within_capacity(idx: jax.Array, valid: jax.Array, E: int, capacity: int) -> jax.Array:
    """[T, K] bool: the assignment fits its expert's capacity. Priority: slot 0 of every token, then slot 1..."""
    T, K = idx.shape
    flat_idx = idx.T.reshape(-1)  # slot-major: all first choices before any second choice
    flat_valid = valid.T.reshape(-1)
    onehot = jax.nn.one_hot(flat_idx, E, dtype=jnp.int32) * flat_valid[:, None]
    position = jnp.cumsum(onehot, axis=0) - onehot  # earlier assignments to the same expert
    pos = jnp.take_along_axis(position, flat_idx[:, None], axis=1)[:, 0]
    fits = (pos < capacity) & flat_valid
    return fits.reshape(K, T).T
