"""Expert pruning by measured usage: count router assignments on calibration text, keep the most used experts.

    counts = usage_counts(text_params, text_cfg, ids, mask)          # [L, E] assignments per expert
    keep = select_experts(counts, 96)                                 # [L, 96] most used per layer
    params, cfg = prune_thinker(params, cfg, keep)                    # sliced experts + router columns
    save_pruned(params, cfg, src_dir, out_dir, kept={"thinker": keep})  # out_dir/hf, out_dir/orbax

Two equivalent forms of the same pruning:
- *sliced*: expert weights and router columns are cut (``surgery.keep_experts``); the config says M experts.
  This is what a pruned checkpoint holds, and what saves memory.
- *masked*: the full model with ``RoutingConfig(expert_keep_mask_per_layer=...)``; the router's softmax
  runs over the kept experts only, which is exactly the sliced router's softmax, so both give the same
  logits (tests/experiments/test_pruning.py). Use it for ablations without writing a checkpoint.

A pruned checkpoint directory records the original ids of the kept experts in ``omni_jax_pruning.json``
(chained through an already pruned source, so the ids always refer to the unpruned model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from omni_jax.errors import UsageError
from omni_jax.config import OmniConfig, TextConfig
from omni_jax.weights.export import FORMATS as EXPORT_FORMATS
from omni_jax.weights.export import dtype_name, export_checkpoint
from omni_jax.experiments.surgery import (SurgeryError, check_expert_keep, keep_experts, with_talker_text,
                                          with_thinker_text)

PRUNING_RECORD = "omni_jax_pruning.json"
FORMATS = EXPORT_FORMATS
_EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts")  # transformers 5.x thinker / talker spellings


class PruningError(UsageError):
    """A pruning request that cannot work (keep count out of range, bad counts, existing output, ...)."""


# ----------------------------------------------------------------------------------------- keep counts

def resolve_keep(value: int | float, num_experts: int, top_k: int) -> int:
    """A keep count from an int (experts kept) or a float fraction of ``num_experts`` (0.75 of 128 -> 96)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise PruningError(f"keep {value!r}: expected a number of experts or a fraction of {num_experts}")
    if isinstance(value, (float, np.floating)):
        if not 0.0 < value <= 1.0:
            raise PruningError(f"keep fraction {value} outside (0, 1]")
        keep = int(round(float(value) * num_experts))
    else:
        keep = int(value)
    if not top_k <= keep <= num_experts:
        raise PruningError(f"keeping {keep} experts per layer: need top_k={top_k} <= keep <= {num_experts}")
    return keep


def select_experts(counts: np.ndarray, keep: int, top_k: int = 1) -> np.ndarray:
    """keep idx [L, keep] int32 (ascending): the ``keep`` most used experts of each layer.

    counts [L, E]: usage per layer and expert. Ties are broken by the lower expert index, so the choice is
    deterministic. ``top_k``: the model's experts per token (keeping fewer cannot work).
    """
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] == 0:
        raise PruningError(f"usage counts have shape {counts.shape}, expected [num_layers, num_experts]")
    keep = int(keep)
    e = counts.shape[1]
    if not max(top_k, 1) <= keep <= e:
        raise PruningError(f"keeping {keep} experts per layer: need top_k={top_k} <= keep <= {e}")
    order = np.argsort(-counts.astype(np.float64), axis=1, kind="stable")  # stable: equal counts keep index order
    return np.sort(order[:, :keep], axis=1).astype(np.int32)


def keep_mask(keep_idx: np.ndarray, num_experts: int) -> tuple[tuple[bool, ...], ...]:
    """[L][E] booleans (static, hashable) with True at the kept experts of each layer."""
    keep_idx = np.asarray(keep_idx)
    mask = np.zeros((keep_idx.shape[0], num_experts), bool)
    np.put_along_axis(mask, keep_idx.astype(np.int64), True, axis=1)
    return tuple(tuple(bool(b) for b in row) for row in mask)


def masked_routing(text_cfg: TextConfig, keep_idx: np.ndarray, base=None):
    """The RoutingConfig that never picks a pruned expert (softmax over the kept ones): the mask form."""
    from omni_jax.moe.router import RoutingConfig

    try:
        keep_idx = check_expert_keep(keep_idx, text_cfg)
    except SurgeryError as e:
        raise PruningError(str(e)) from None
    base = RoutingConfig.from_text_config(text_cfg) if base is None else base
    return base.replace(expert_keep_mask_per_layer=keep_mask(keep_idx, text_cfg.num_experts))


def masked_options(text_cfg: TextConfig, keep_idx: np.ndarray, base=None, **stack_kw):
    """StackOptions for the full model behaving like the model pruned to ``keep_idx``."""
    from omni_jax.models.decoder import StackOptions

    return StackOptions.uniform(text_cfg, masked_routing(text_cfg, keep_idx, base), **stack_kw)


# ------------------------------------------------------------------------------------------- usage

def usage_counts(text_params: dict, text_cfg: TextConfig, input_ids: np.ndarray, attention_mask: np.ndarray, *,
                 batch_size: int = 8, opts=None, progress: Callable[..., Iterable] | None = None
                 ) -> np.ndarray:
    """[L, E] int64: router assignments per layer and expert over the real (unmasked) calibration tokens.

    input_ids / attention_mask [N, S]; run in batches of ``batch_size`` rows (the last one padded with
    masked rows, which the counts exclude, so there is one compilation). ``opts``: StackOptions (default:
    the reference routing); with a keep mask the pruned experts count 0.
    """
    from omni_jax.models.decoder import StackOptions

    ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask)
    if ids.ndim != 2 or ids.shape != mask.shape or ids.shape[0] == 0:
        raise PruningError(f"calibration ids {ids.shape} / mask {mask.shape}: expected two equal [N, S] shapes")
    if not mask.any():
        raise PruningError("calibration set has no unmasked token")
    opts = StackOptions.uniform(text_cfg) if opts is None else opts

    from omni_jax.experiments.evaluate import router_counts
    from omni_jax.experiments.evalset import EvalSet

    rows = EvalSet([""] * len(ids), ids.astype(np.int32), mask.astype(np.int32), "calibration")
    progress = progress or (lambda it, **_: it)
    return router_counts(text_params, text_cfg, opts, rows, max(1, min(int(batch_size), len(ids))), progress)


# ------------------------------------------------------------------------------------------ surgery

def prune_thinker(params: dict, cfg: OmniConfig, keep_idx: np.ndarray | None,
                  talker_keep_idx: np.ndarray | None = None) -> tuple[dict, OmniConfig]:
    """The whole model's params and config with the Thinker's experts cut to ``keep_idx`` [L, M].

    ``talker_keep_idx`` [L_talker, M_talker] prunes the Talker's routed experts too (its shared expert
    stays). None leaves that model unchanged. Other components are shared, not copied.
    """
    out = dict(params)
    try:
        if keep_idx is not None:
            text, text_cfg = keep_experts(params["thinker"]["text"], cfg.thinker.text, keep_idx)
            out["thinker"] = dict(params["thinker"], text=text)
            cfg = with_thinker_text(cfg, text_cfg)
        if talker_keep_idx is not None:
            if not cfg.has_talker or "talker" not in params:
                raise PruningError("talker_keep_idx given but the model has no talker")
            # the Talker's decoder layers sit directly under params["talker"] (beside its projections)
            out["talker"], text_cfg = keep_experts(params["talker"], cfg.talker.text, talker_keep_idx)
            cfg = with_talker_text(cfg, text_cfg)
    except SurgeryError as e:
        raise PruningError(str(e)) from None
    return out, cfg


# ------------------------------------------------------------------------------------------- saving

def read_pruning_record(directory: str | Path) -> dict | None:
    path = Path(directory) / PRUNING_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PruningError(f"{path}: corrupt pruning record (not JSON)") from None


def _original_ids(previous: dict | None, model: str, keep: np.ndarray) -> list[list[int]]:
    """Kept ids in the unpruned model's numbering (through the source's own record, if it was pruned)."""
    if previous and model in previous:
        before = np.asarray(previous[model].get("kept_experts", []))
        if before.ndim != 2 or before.shape[0] != keep.shape[0] or keep.max() >= before.shape[1]:
            raise PruningError(f"the source's {PRUNING_RECORD} lists kept experts of shape {before.shape}, "
                               f"which does not match its {model} ({keep.shape[0]} layers)")
        return np.take_along_axis(before, keep, axis=1).tolist()
    return keep.tolist()


def _pruned_config_json(src: dict, cfg: OmniConfig) -> dict:
    """The source config.json with the text models' expert counts replaced (whichever spelling it uses)."""
    out = json.loads(json.dumps(src))

    def set_count(text: dict, n: int):
        keys = [k for k in _EXPERT_COUNT_KEYS if k in text] or ["num_experts"]
        for k in keys:
            text[k] = n

    set_count(out.setdefault("thinker_config", {}).setdefault("text_config", {}), cfg.thinker.text.num_experts)
    if cfg.has_talker and "talker_config" in out:
        set_count(out["talker_config"].setdefault("text_config", {}), cfg.talker.text.num_experts)
    return out


def save_pruned(params: dict, cfg: OmniConfig, src_dir: str | Path, out_dir: str | Path,
                formats: Iterable[str] = FORMATS, *, kept: dict[str, np.ndarray] | None = None,
                dtype: str | None = None, max_shard_bytes: int = 2 << 30, note: dict | None = None,
                ) -> dict[str, Path]:
    """Write the (pruned) model as ``out_dir/hf`` (safetensors + config.json) and/or ``out_dir/orbax``.

    params: the whole model's pure params (``ctx.params`` after ``prune_thinker``); cfg: its OmniConfig.
    src_dir: the checkpoint it came from (its config.json is copied with the expert counts changed, and its
    tokenizer / preprocessor / generation / chat-template files are copied). kept: {"thinker": [L, M],
    "talker": [L', M']} kept expert ids (any order: surgery keeps them ascending), recorded in
    ``omni_jax_pruning.json`` in the unpruned model's numbering. dtype: "float32" | "bfloat16" | "float16"
    (default: the params' own dtype). Everything is written to a temporary directory beside ``out_dir``
    and renamed at the end: a failure leaves no ``out_dir``.
    Returns {format: directory}.
    """
    from omni_jax.weights.mapping import flatten

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    try:
        src_config = json.loads((src_dir / "config.json").read_text())
    except FileNotFoundError:
        raise PruningError(f"{src_dir}: no config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PruningError(f"{src_dir / 'config.json'}: not JSON") from None
    config_json = _pruned_config_json(src_config, cfg)
    if OmniConfig.from_hf(config_json) != cfg:
        raise PruningError(f"{src_dir}: config.json does not describe these parameters beyond the expert counts "
                           "(was the model pruned another way?)")

    dtype = dtype or dtype_name(flatten(params)["thinker.text.embed"])
    previous = read_pruning_record(src_dir)
    record = {"format": "omni_jax.pruning.v1", "source": str(src_dir.resolve()), "dtype": dtype, **(note or {})}
    for model, idx in (kept or {}).items():
        if model not in ("thinker", "talker") or (model == "talker" and not cfg.has_talker):
            raise PruningError(f"kept[{model!r}]: no such MoE model here (thinker, talker)")
        idx = np.sort(np.asarray(idx, np.int64), axis=1)  # the sliced model holds them in ascending order
        text_cfg = cfg.thinker.text if model == "thinker" else cfg.talker.text
        if idx.shape != (text_cfg.num_layers, text_cfg.num_experts):
            raise PruningError(f"kept[{model!r}] has shape {idx.shape}, the {model} has "
                               f"[{text_cfg.num_layers}, {text_cfg.num_experts}] experts")
        original = (previous or {}).get(model, {}).get("num_experts_original")
        if original is None:
            src_cfg = OmniConfig.from_hf(src_config)
            original = (src_cfg.thinker.text if model == "thinker" else src_cfg.talker.text).num_experts
        record[model] = {"num_experts_original": int(original),
                         "num_experts_kept": int(idx.shape[1]),
                         "kept_experts": _original_ids(previous, model, idx)}
    for model in ("thinker", "talker"):  # a source's pruning that is not redone here is carried over
        if previous and model in previous and model not in record:
            record[model] = previous[model]
    return export_checkpoint(params, cfg, out_dir, formats, config_json=config_json, aux_dir=src_dir,
                             extra_files={PRUNING_RECORD: json.dumps(record, indent=1)}, dtype=dtype,
                             max_shard_bytes=max_shard_bytes, source={"from": str(src_dir)})
