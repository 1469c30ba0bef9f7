"""Model surgery on pure parameter dicts: keep a subset of experts per layer, or a subset of layers.

These are the building blocks of expert pruning and of distillation students. They work on a decoder's
``text`` params (``{"embed", "layers": {..., "mlp": {"router", "gate_up", "down", ...}}, "norm", ...}``) and
return new params and the matching config (``dataclasses.replace``), so the result runs through the same
model code and exports through the same name table.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.errors import UsageError
from omni_jax.config import OmniConfig, TextConfig

EXPERT_KEYS = ("gate_up", "down")


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


def keep_experts(text_params: dict, cfg: TextConfig, keep: np.ndarray) -> tuple[dict, TextConfig]:
    """Keep ``keep[l]`` experts in layer l: expert weights and router columns are sliced, num_experts = M."""
    keep = check_expert_keep(keep, cfg)
    rows = np.arange(cfg.num_layers)[:, None]
    mlp = dict(text_params["layers"]["mlp"])
    for k in EXPERT_KEYS:  # device arrays are sliced on their device (no host copy of a 38 GB stack)
        mlp[k] = _xp(mlp[k]).asarray(mlp[k])[rows, keep]
    router = mlp["router"]  # [L, H, E]
    mlp["router"] = _xp(router).take_along_axis(router, keep[:, None, :], axis=2)
    layers = dict(text_params["layers"], mlp=mlp)
    return dict(text_params, layers=layers), dataclasses.replace(cfg, num_experts=keep.shape[1])


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
