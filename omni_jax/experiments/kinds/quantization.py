"""Weight-only INT8 / INT4 quantization of the MoE expert weights: memory saved vs quality lost.

Variants: the unmodified model ("fp", the reference), then each bit width of ``bits`` applied to the routed
expert weights (``gate_up`` / ``down``) of the Thinker's text model, and, with "talker" in ``stacks``, of
the Talker's decoder (evaluated teacher-forced on greedy speech of the reference, see ``talker_eval.py``).
The model holds the integer storage and dequantizes each expert's slice inside the MoE backends
(``omni_jax.quant``); router, attention, norms, embeddings and shared experts stay in the model dtype.

Knobs (``[quantization]``): ``bits`` (list of 8 / 4), ``group_size`` (input rows per scale, 128; a smaller
input dim is one group), ``scale_dtype`` ("float32" | "bfloat16"), ``stacks`` (["thinker"] and/or
"talker"), ``talker_prompts`` / ``talker_frames`` (the Talker evaluation's size).

Columns beside ``ctx.evaluate_thinker``'s metrics: ``bits``, ``expert_bytes_fraction`` (expert storage
/ the unmodified model's), ``expert_memory_saved`` (1 - that), ``param_bytes_fraction`` (whole text
model), ``bytes_per_expert_weight`` and ``max_abs_weight_error`` (max |dequantized - float| over all
expert weights).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from omni_jax.experiments.schema import Choice, Int, ListOf
from omni_jax.quant import expert_param_bytes, expert_weight_error, quantize_experts
from omni_jax.quant.weights import QuantizationError, check_quantizable

SCALE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TABLES = ("eval",)
SCHEMA = {
    "bits": ListOf([8, 4], item=Int(None, choices=(8, 4)), min_len=1),
    "group_size": Int(128, "input rows per scale", min=1),
    "scale_dtype": Choice("float32", choices=tuple(SCALE_DTYPES)),
    "stacks": ListOf(["thinker"], item=Choice(None, choices=("thinker", "talker")), min_len=1),
    "talker_prompts": Int(2, min=1),
    "talker_frames": Int(12, min=1),
}


def check(knobs: dict, cfg) -> list[tuple[str, str]]:
    """Problems only the checkpoint's config reveals: (key, message)."""
    texts = [cfg.thinker.text] + ([cfg.talker.text] if "talker" in knobs["stacks"] and cfg.has_talker else [])
    for text in texts:
        h, i = text.hidden_size, text.moe_intermediate_size
        for bits in knobs["bits"]:
            for shape in ((h, 2 * i), (i, h)):  # gate_up [in, out], down [in, out] of one expert
                try:
                    check_quantizable(shape, bits, knobs["group_size"])
                except QuantizationError as e:
                    return [("group_size", str(e))]
    return []


def _num_expert_weights(text_params: dict) -> int:
    mlp = text_params["layers"]["mlp"]
    return sum(math.prod(mlp[k].shape) for k in ("gate_up", "down"))


def _memory_columns(fp: dict, q: dict, bits, base_metrics: dict | None, metrics: dict) -> dict:
    base = expert_param_bytes(fp)
    eb = expert_param_bytes(q)
    out = {"bits": bits, "expert_bytes_fraction": eb / base, "expert_memory_saved": 1.0 - eb / base,
           "bytes_per_expert_weight": eb / _num_expert_weights(fp),
           "max_abs_weight_error": 0.0 if q is fp else expert_weight_error(fp, q)}
    if base_metrics is not None and "param_bytes" in metrics:
        out["param_bytes_fraction"] = metrics["param_bytes"] / base_metrics["param_bytes"]
    return out


def run(ctx) -> list[dict]:
    knobs = ctx.spec["quantization"]
    group, scale_dtype = knobs["group_size"], SCALE_DTYPES[knobs["scale_dtype"]]
    rows = []
    if "thinker" in knobs["stacks"]:
        fp = ctx.text_params
        base = ctx.evaluate_thinker()
        rows.append({"variant": "thinker fp (reference)", "stack": "thinker",
                     **_memory_columns(fp, fp, None, base, base), **base})
        for bits in ctx.progress(knobs["bits"], desc="thinker quantization"):
            q = quantize_experts(fp, bits, group, scale_dtype)
            m = ctx.evaluate_thinker(text_params=q)
            rows.append({"variant": f"thinker int{bits}", "stack": "thinker",
                         **_memory_columns(fp, q, bits, base, m), **m})
            del q
    if "talker" in knobs["stacks"] and ctx.cfg.has_talker and "talker" in ctx.params:
        rows += _talker_rows(ctx, knobs, group, scale_dtype)
    plot(ctx, rows)
    return rows


def _talker_rows(ctx, knobs, group, scale_dtype) -> list[dict]:
    from omni_jax.experiments.talker_eval import TalkerEval

    tev = TalkerEval.build(ctx, knobs["talker_prompts"], knobs["talker_frames"])
    opts = _talker_opts(ctx)
    fp = ctx.params["talker"]
    base = tev.evaluate(opts)
    rows = [{"variant": "talker fp (reference)", "stack": "talker", **_memory_columns(fp, fp, None, None, base),
             **base}]
    for bits in ctx.progress(knobs["bits"], desc="talker quantization"):
        q = quantize_experts(fp, bits, group, scale_dtype)
        m = tev.evaluate(opts, params=q)  # the same teacher-forced evaluation, on the quantized Talker
        rows.append({"variant": f"talker int{bits}", "stack": "talker", **_memory_columns(fp, q, bits, None, m),
                     **m})
    return rows


def _talker_opts(ctx):
    from omni_jax.models.decoder import StackOptions

    return StackOptions.uniform(ctx.cfg.talker.text)


def plot(ctx, rows: list[dict]) -> None:
    """One row of bars per stack: expert memory (MiB, with the saving), KL to the unmodified model, perplexity."""
    stacks = [s for s in ("thinker", "talker") if any(r["stack"] == s for r in rows)]
    if not stacks:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(stacks), 3, figsize=(13, 3.4 * len(stacks)), squeeze=False,
                             constrained_layout=True)
    for row_axes, stack in zip(axes, stacks):
        sel = [r for r in rows if r["stack"] == stack]
        names = ["fp" if r["bits"] is None else f"int{r['bits']}" for r in sel]
        colors = ["tab:gray" if r["bits"] is None else ("tab:blue" if r["bits"] == 8 else "tab:orange") for r in sel]
        panels = [("expert weights (MiB)", [r["expert_param_bytes"] / 2**20 for r in sel]),
                  ("KL to reference (nats/token)", [r["kl_to_reference"] for r in sel]),
                  ("perplexity", [r["perplexity"] for r in sel])]
        for ax, (title, values) in zip(row_axes, panels):
            ax.bar(range(len(sel)), values, color=colors)
            ax.set_xticks(range(len(sel)), names)
            ax.set_title(f"{stack}: {title}", fontsize=10)
            ax.grid(alpha=0.3, axis="y")
        for i, r in enumerate(sel):  # the memory saved above each quantized bar
            if r["bits"] is not None:
                row_axes[0].annotate(f"-{100 * r['expert_memory_saved']:.0f}%", (i, panels[0][1][i]), ha="center",
                                     va="bottom", fontsize=8)
    fig.suptitle("weight-only expert quantization: memory vs quality")
    ctx.save_figure(fig, "quantization")
