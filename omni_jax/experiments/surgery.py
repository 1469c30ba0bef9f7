"""Model surgery on pure parameter dicts: keep a subset of experts per layer, or a subset of layers.

These are the building blocks of expert pruning and of distillation students. They work on a decoder's
``text`` params (``{"embed", "layers": {..., "mlp": {"router", "gate_up", "down", ...}}, "norm", ...}``) and
return new params and the matching config (``dataclasses.replace``), so the result runs through the same
model code and exports through the same name table. Whatever has an ``experts`` axis in its declared logical
axes (the expert stacks, the router's columns) is cut along it; ``axes`` (a dict mirroring the params)
defaults to the axes the decoder stack declares.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.config import OmniConfig, TextConfig
from omni_jax.errors import UsageError
from omni_jax.models.decoder import text_params_axes
from omni_jax.moe.layout import expert_axis


class SurgeryError(UsageError):
    """A keep list that does not fit the model (wrong length, out of range, duplicates, too few)."""


def _xp(a):
    """numpy for host arrays, jax.numpy for device arrays (slicing stays where the array is)."""
    return jnp if isinstance(a, jax.Array) else np


def check_expert_keep(keep: np.ndarray, cfg: TextConfig) -> np.ndarray:
    """keep [num_layers, M] int: expert indexes kept per layer (any order; sorted on return)."""
    keep = np.asarray(keep)
    if keep.ndim != 2 or keep.shape[0] != cfg.num_layers:
        raise SurgeryError(f"expert keep list has shape {keep.shape}, expected [num_layers={cfg.num_layers}, M]")
    m = keep.shape[1]
    if not cfg.top_k <= m <= cfg.num_experts:
        raise SurgeryError(f"keeping {m} experts per layer: need top_k={cfg.top_k} <= M <= {cfg.num_experts}")
    if keep.min() < 0 or keep.max() >= cfg.num_experts:
        raise SurgeryError(f"expert index out of range 0..{cfg.num_experts - 1}")
    keep = np.sort(keep, axis=1)
    if (np.diff(keep, axis=1) == 0).any():
        raise SurgeryError("an expert is listed twice in one layer's keep list")
    return keep.astype(np.int32)


def _take_experts(a, keep: np.ndarray, axis: int):
    """a [L, ..., E (at ``axis``), ...] -> [L, ..., M, ...]: per layer l the experts keep[l]."""
    xp = _xp(a)
    shape = [1] * a.ndim
    shape[0], shape[axis] = keep.shape
    return xp.take_along_axis(xp.asarray(a), keep.reshape(shape), axis=axis)


def keep_experts(text_params: dict, cfg: TextConfig, keep: np.ndarray,
                 axes: dict | None = None) -> tuple[dict, TextConfig]:
    """Keep ``keep[l]`` experts in layer l: every array with an ``experts`` axis (expert weights, router
    columns) is cut along it; num_experts = M."""
    keep = check_expert_keep(keep, cfg)
    axes = text_params_axes(text_params) if axes is None else axes

    def cut(p, a):
        if isinstance(p, dict):
            return {k: cut(v, a.get(k) if isinstance(a, dict) else None) for k, v in p.items()}
        d = expert_axis(a) if isinstance(a, tuple) else None
        return p if d is None else _take_experts(p, keep, d)  # sliced on its device (no host copy of a stack)

    return cut(text_params, axes), dataclasses.replace(cfg, num_experts=keep.shape[1])


def keep_layers(text_params: dict, cfg: TextConfig, layers: list[int]) -> tuple[dict, TextConfig]:
    """Keep the listed decoder layers (in order); embeddings, final norm and head unchanged."""
    idx = np.asarray(layers, np.int32)
    if idx.ndim != 1 or len(idx) == 0 or idx.min() < 0 or idx.max() >= cfg.num_layers:
        raise SurgeryError(f"layer list {list(layers)} outside 0..{cfg.num_layers - 1}")
    new_layers = jax.tree.map(lambda a: a[idx], text_params["layers"])
    return dict(text_params, layers=new_layers), dataclasses.replace(cfg, num_layers=len(idx))


def evenly_spaced_layers(n_layers: int, keep: int) -> list[int]:
    """``keep`` layer indexes spread over 0..n_layers-1, first and last included."""
    if not 1 <= keep <= n_layers:
        raise SurgeryError(f"cannot keep {keep} of {n_layers} layers")
    return sorted({int(round(i)) for i in np.linspace(0, n_layers - 1, keep)})


def with_thinker_text(cfg: OmniConfig, text_cfg: TextConfig) -> OmniConfig:
    """The omni config with the Thinker's text config replaced."""
    return dataclasses.replace(cfg, thinker=dataclasses.replace(cfg.thinker, text=text_cfg))


def with_talker_text(cfg: OmniConfig, text_cfg: TextConfig) -> OmniConfig:
    return dataclasses.replace(cfg, talker=dataclasses.replace(cfg.talker, text=text_cfg))
