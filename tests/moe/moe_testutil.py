"""Shared helpers for the MoE tests: random MoE params with an O(1)-scale router (top-k free of ties)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def random_moe_params(seed: int, E: int, H: int, I: int, shared: int = 0, router_scale: float = 1.0) -> dict:
    k = jax.random.split(jax.random.PRNGKey(seed), 6)
    p = dict(
        router=router_scale * jax.random.normal(k[0], (H, E), jnp.float32),
        gate_up=jax.random.normal(k[1], (E, H, 2 * I), jnp.float32) / np.sqrt(H),
        down=jax.random.normal(k[2], (E, I, H), jnp.float32) / np.sqrt(I),
    )
    if shared:
        p["shared_gate_up"] = jax.random.normal(k[3], (H, 2 * shared), jnp.float32) / np.sqrt(H)
        p["shared_down"] = jax.random.normal(k[4], (shared, H), jnp.float32) / np.sqrt(shared)
        p["shared_gate"] = jax.random.normal(k[5], (H, 1), jnp.float32)
    return p


def random_tokens(seed: int, T: int, H: int) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(1000 + seed), (T, H), jnp.float32)


# HF tensor names of a sparse MoE block (on-disk per-expert layout) -> the ``moe_block`` param dict, for the
# block-level parity test (the model's own table lives in ``omni_jax.models.decoder.decoder_layer_rules``).
def moe_hf_rules(cfg, *, hf_prefix: str = "", param_prefix: str = "", num_layers: int | None = None) -> list:
    """cfg: an ``omni_jax.config.TextConfig``; the shared expert rules appear when it has one (Talker)."""
    from omni_jax.weights.rules import linear_rule

    li, lr = (("layer",), (num_layers,)) if num_layers is not None else ((), ())
    E = cfg.num_experts
    h, q = hf_prefix, param_prefix
    rules = [
        linear_rule(f"{h}gate.weight", f"{q}router", li, lr),
        linear_rule(f"{h}experts.{{expert}}.gate_proj.weight", f"{q}gate_up", li + ("expert",), lr + (E,), part=(0, 2)),
        linear_rule(f"{h}experts.{{expert}}.up_proj.weight", f"{q}gate_up", li + ("expert",), lr + (E,), part=(1, 2)),
        linear_rule(f"{h}experts.{{expert}}.down_proj.weight", f"{q}down", li + ("expert",), lr + (E,)),
    ]
    if cfg.shared_expert_intermediate_size:
        rules += [
            linear_rule(f"{h}shared_expert.gate_proj.weight", f"{q}shared_gate_up", li, lr, part=(0, 2)),
            linear_rule(f"{h}shared_expert.up_proj.weight", f"{q}shared_gate_up", li, lr, part=(1, 2)),
            linear_rule(f"{h}shared_expert.down_proj.weight", f"{q}shared_down", li, lr),
            linear_rule(f"{h}shared_expert_gate.weight", f"{q}shared_gate", li, lr),
        ]
    return rules
