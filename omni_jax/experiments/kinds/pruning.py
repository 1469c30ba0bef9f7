"""Expert pruning by measured usage: keep the most used experts of each Thinker layer, see what is lost.

Router usage (assignments per layer and expert) is counted on the calibration texts with the unmodified
model; for each keep count the most used experts of every layer are kept (ties to the lower index) and the
Thinker is evaluated against the unmodified one in two equivalent forms: *sliced* (experts and router
columns cut: the smaller model a pruned checkpoint holds) and *mask* (the full model whose router never
picks a pruned expert; softmax over the kept ones). Both should score the same; the sliced one is what saves
memory.

Knobs (``[pruning]``): ``keep`` (list: ints = experts kept per layer, floats in (0, 1] = fractions of
num_experts, e.g. 0.75 / 0.5 = 96 / 64 of the real model's 128), ``sliced_variant`` / ``mask_variant``
(bool: evaluate the sliced / the mask form; the sliced one needs memory for a pruned copy of the Thinker
beside the loaded model), ``write_checkpoints`` (bool: write each pruned model under
artifacts/pruned/keep_<M>/{hf,orbax}; without the sliced evaluation its row's form is "written"), ``formats`` (["hf", "orbax"]), ``checkpoint_dtype`` ("" = the run's dtype, or "bfloat16" / "float32").

Columns beside ``ctx.evaluate_thinker``'s metrics: ``form`` (reference / sliced / mask), ``experts_kept``,
``keep_fraction``, ``calibration_coverage`` (share of the calibration assignments that went to kept
experts), ``param_bytes_fraction`` (text model bytes / unmodified), ``kept_experts`` ([L][M] ids, in
metrics.json only) and ``checkpoint_hf`` / ``checkpoint_orbax`` when written. Artifacts:
``artifacts/pruning/usage_counts.npy`` ([L, E] calibration counts) and ``kept_experts.json``.
Plot ``plots/expert_usage.png``: per-layer usage share sorted by rank, with the cut at each keep count.
``max_load`` (max / mean load) of a mask row averages over all E experts, pruned ones at 0, so it reads E/M
times the sliced row's; every other metric of the two forms agrees.
"""

from __future__ import annotations

import json

import jax
import numpy as np

from omni_jax.experiments.pruning import (FORMATS, PruningError, masked_options, prune_thinker, resolve_keep,
                                          save_pruned, select_experts)
from omni_jax.experiments.schema import Bool, Choice, Either, Float, Int, ListOf
from omni_jax.experiments.surgery import keep_experts

TABLES = ("eval", "calibration")
SCHEMA = {
    "keep": ListOf([0.75, 0.5], "ints: experts kept per layer; floats in (0, 1]: fractions of num_experts",
                   item=Either(None, fields=(Int(None, min=1), Float(None, min=0.0, max=1.0, min_open=True)),
                               what="an expert count or a fraction"), min_len=1),
    "sliced_variant": Bool(True),
    "mask_variant": Bool(True),
    "write_checkpoints": Bool(False),
    "formats": ListOf(list(FORMATS), item=Choice(None, choices=FORMATS), min_len=1),
    "checkpoint_dtype": Choice("", "\"\" = the run's dtype", choices=("", "float32", "bfloat16", "float16")),
}


def check(knobs: dict, cfg) -> list[tuple[str, str]]:
    """Problems only the checkpoint's config reveals: (key, message)."""
    text = cfg.thinker.text
    for v in knobs["keep"]:
        try:
            resolve_keep(v, text.num_experts, text.top_k)
        except PruningError as e:
            return [("keep", str(e))]
    return []


def run(ctx) -> list[dict]:
    knobs = ctx.spec["pruning"]
    cfg = ctx.text_cfg
    e, k = cfg.num_experts, cfg.top_k
    keeps = list(dict.fromkeys(resolve_keep(v, e, k) for v in knobs["keep"]))  # in order, duplicates once

    counts = ctx.router_counts(eval_set=ctx.calibration())  # [L, E] on the unmodified model
    art = ctx.artifact_dir("pruning")
    np.save(art / "usage_counts.npy", counts)
    total = max(int(counts.sum()), 1)

    base = ctx.evaluate_thinker()
    rows = [{"variant": f"all {e} experts (reference)", "form": "reference", "experts_kept": e, "keep_fraction": 1.0,
             "calibration_coverage": 1.0, "param_bytes_fraction": 1.0, **base}]
    kept_record = {}
    for m in ctx.progress(keeps, desc="keep counts"):
        keep = select_experts(counts, m, k)
        kept_record[str(m)] = keep.tolist()
        common = {"experts_kept": m, "keep_fraction": m / e,
                  "calibration_coverage": float(np.take_along_axis(counts, keep, axis=1).sum()) / total}
        form = "sliced" if knobs["sliced_variant"] else "written"
        row = {"variant": f"keep {m}/{e} ({form})", "form": form, **common}
        if knobs["sliced_variant"]:
            params, pcfg = keep_experts(ctx.text_params, cfg, keep)  # host copies of the kept experts
            sliced = ctx.evaluate_thinker(jax.device_put(params), pcfg)  # on the device once, not per batch
            row.update(param_bytes_fraction=sliced["param_bytes"] / base["param_bytes"], **sliced)
            del params
        row["kept_experts"] = keep.tolist()
        if knobs["write_checkpoints"]:
            row.update(_write(ctx, knobs, keep, m, counts))
        if knobs["sliced_variant"] or knobs["write_checkpoints"]:
            rows.append(row)
        if knobs["mask_variant"]:
            masked = ctx.evaluate_thinker(opts=masked_options(cfg, keep))
            rows.append({"variant": f"keep {m}/{e} (mask)", "form": "mask", **common,
                         "param_bytes_fraction": masked["param_bytes"] / base["param_bytes"], **masked})
    (art / "kept_experts.json").write_text(json.dumps(kept_record))
    plot(ctx, counts, keeps, rows)
    return rows


def _write(ctx, knobs: dict, keep: np.ndarray, m: int, counts: np.ndarray) -> dict:
    """The whole model with the Thinker pruned, as HF safetensors and / or Orbax checkpoint directories."""
    params, cfg = prune_thinker(ctx.params, ctx.cfg, keep)
    calib = ctx.spec["calibration"]
    note = {"experiment": ctx.spec.get("name"), "selection": "most used per layer on the calibration set",
            "calibration": {"path": calib.get("path"), "max_examples": calib.get("max_examples"),
                            "max_tokens": calib.get("max_tokens"), "assignments": int(counts.sum())}}
    out = ctx.artifact_dir("pruned") / f"keep_{m}"
    dirs = save_pruned(params, cfg, ctx.checkpoint, out, knobs["formats"], kept={"thinker": keep},
                       dtype=knobs["checkpoint_dtype"] or ctx.dtype, note=note)
    return {f"checkpoint_{fmt}": str(ctx.final_path(d)) for fmt, d in dirs.items()}


def plot(ctx, counts: np.ndarray, keeps: list[int], rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    share = -np.sort(-counts.astype(np.float64), axis=1) / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n_layers, e = share.shape
    rank = np.arange(1, e + 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    ax = axes[0]
    cmap = plt.get_cmap("viridis")
    for layer in range(n_layers):
        ax.plot(rank, share[layer], color=cmap(layer / max(n_layers - 1, 1)), lw=0.8, alpha=0.6)
    ax.plot(rank, share.mean(axis=0), color="black", lw=2, label="mean over layers")
    for m in keeps:
        ax.axvline(m + 0.5, color="red", ls="--", lw=1)
        ax.text(m + 0.5, ax.get_ylim()[1] * 0.95, f" keep {m}", color="red", fontsize=8, va="top")
    ax.set_xlabel("expert rank in its layer (most used first)")
    ax.set_ylabel("share of the layer's assignments")
    ax.set_title(f"calibration usage, {n_layers} layers (colour: depth)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    for form, marker in (("sliced", "o"), ("mask", "x")):
        sel = sorted([r for r in rows if r["form"] in (form, "reference")], key=lambda r: r["experts_kept"])
        if len(sel) > 1:
            ax.plot([r["experts_kept"] for r in sel], [r["kl_to_reference"] for r in sel], marker=marker,
                    label=form)
    ax.set_xlabel("experts kept per layer")
    ax.set_title("KL to the unmodified Thinker (nats/token)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ctx.save_figure(fig, "expert_usage")
