"""HF tensor names of a sparse MoE block (on-disk per-expert layout) ↔ the ``moe_block`` param dict.

Names are relative to the block (``mlp.`` in a decoder layer); pass ``hf_prefix`` / ``param_prefix`` and
``num_layers`` to root them in a stacked decoder (e.g. ``hf_prefix="layers.{layer}.mlp."``,
``param_prefix="layers.mlp."``): the layer index then leads the expert index, as in the stacked params.
"""

from __future__ import annotations

from omni_jax.weights.rules import Rule, linear_rule


def hf_rules(cfg, *, hf_prefix: str = "", param_prefix: str = "", num_layers: int | None = None) -> list[Rule]:
    """cfg: an ``omni_jax.config.TextConfig``; the shared expert rules appear when it has one (Talker)."""
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
