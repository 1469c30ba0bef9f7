"""The MoE block's parameters: names and logical axes, declared once.

``omni_jax.models.decoder`` creates the parameters with these axes (a leading ``"layers"`` axis added when
stacked); expert parallelism derives its ``shard_map`` specs from them through ``omni_jax.sharding.RULES``;
quantization and expert surgery find the expert stacks by the ``"experts"`` axis in them.
"""

from __future__ import annotations

MOE_AXES: dict[str, tuple] = {
    "router": ("embed", "experts"),  # [H, E]
    "gate_up": ("experts", "embed", "mlp"),  # [E, H, 2I]
    "down": ("experts", "mlp", "embed"),  # [E, I, H]
    "shared_gate_up": ("embed", "mlp"),  # [H, 2S]
    "shared_down": ("mlp", "embed"),  # [S, H]
    "shared_gate": ("embed", None),  # [H, 1]
}


def moe_axes(name: str, stacked: bool) -> tuple:
    """Logical axes of MoE parameter ``name`` (with the leading layer axis when ``stacked``)."""
    axes = MOE_AXES[name]
    return ("layers",) + axes if stacked else axes


def is_expert_stack(axes: tuple) -> bool:
    """A stack of per-expert matrices: an ``experts`` axis before the two matrix dimensions."""
    return "experts" in tuple(axes)[:-2]


def expert_axis(axes: tuple) -> int | None:
    """The dimension holding the experts (None when the array has none)."""
    axes = tuple(axes)
    return axes.index("experts") if "experts" in axes else None
