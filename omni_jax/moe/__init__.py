"""Mixture-of-experts: pure router with research hooks, pluggable dropless dispatch, expert parallelism.

    from omni_jax.moe import RoutingConfig, MoEStats, moe_block
    y, stats = moe_block(x, params, RoutingConfig.from_text_config(text_cfg), token_mask=mask)
"""

from omni_jax.moe.block import moe_block, shared_expert
from omni_jax.moe.dispatch import BACKENDS, BackendError, choose_backend
from omni_jax.moe.router import Routing, RoutingConfig, RoutingError, route
from omni_jax.moe.stats import MoEStats, aux_loss_over_layers

__all__ = [
    "BACKENDS", "BackendError", "MoEStats", "Routing", "RoutingConfig", "RoutingError", "aux_loss_over_layers",
    "choose_backend", "moe_block", "route", "shared_expert",
]
