"""Knowledge distillation: a smaller student of the Thinker's text model (fewer layers, fewer experts per
layer), initialised from the teacher by surgery and trained on the teacher's logits (omni_jax/experiments/
distill.py), then evaluated against the unmodified Thinker.

Knobs (``[distillation]``, defaults and ranges in SCHEMA): ``layers`` (student depth: evenly spaced teacher layers,
first and last kept), ``experts`` (per layer), ``expert_choice`` ("first" | "usage": the most used on the
calibration set), ``modes`` (["off_policy", "on_policy"]: one trained student each), ``train_set``
("calibration" | "eval": the texts trained on; the eval set stays the held-out test), ``steps``, ``lr``,
``schedule`` ("constant" | "cosine"), ``warmup_steps``, ``weight_decay``, ``grad_clip``, ``batch_size``,
``alpha_ce`` 0.7, ``alpha_kl`` 0.3, ``temperature`` 2, ``kl_t2_scale`` (true: the KL term times T²),
``prompt_len`` / ``gen_tokens`` / ``sample_temperature`` (on-policy sampling), ``save_every``,
``max_to_keep``, ``resume`` (true: continue from the checkpoints already in the output directory),
``backend`` (MoE dispatch), ``write_checkpoint`` / ``formats`` / ``checkpoint_dtype`` (write each trained
student as a loadable checkpoint).

Rows: the teacher (reference), the untrained student (surgery only), and one per mode, with
``ctx.evaluate_thinker``'s metrics plus ``student_layers``, ``student_experts``, ``param_bytes_fraction``,
``steps``, ``initial_loss`` / ``final_loss`` / ``final_ce`` / ``final_kl`` (training loss: means of the first
and last 3 steps, 1 in runs of under 6), ``train_seconds``. Artifacts: ``artifacts/student/<mode>/`` (Orbax training checkpoints:
params, optimizer state, step, key, loss history), ``artifacts/student/<mode>_history.json``, with
write_checkpoint ``artifacts/student_checkpoint/<mode>/{hf,orbax}``. Plot ``plots/distillation_loss.png``.
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np

from omni_jax.experiments.distill import MODES, DistillConfig, DistillTrainer, make_student, plot_loss_curves
from omni_jax.experiments.distill import save_student
from omni_jax.experiments.schema import Bool, Choice, Float, Int, ListOf
from omni_jax.weights.export import FORMATS

# Re-running the same command with --resume continues from the Orbax checkpoints a run left.
RESUMABLE = True
TABLES = ("eval", "calibration")
SCHEMA = {
    "layers": Int(2, "student depth", min=1),
    "experts": Int(4, "experts per layer kept", min=1),
    "expert_choice": Choice("usage", choices=("usage", "first")),
    "modes": ListOf(list(MODES), item=Choice(None, choices=MODES), min_len=1),
    "train_set": Choice("calibration", choices=("calibration", "eval")),
    "steps": Int(40, min=1),
    "lr": Float(1e-3, min=0.0, min_open=True),
    "schedule": Choice("constant", choices=("constant", "cosine")),
    "warmup_steps": Int(0, min=0),
    "weight_decay": Float(0.0, min=0.0),
    "grad_clip": Float(1.0, "0: off", min=0.0),
    "batch_size": Int(4, min=1),
    "alpha_ce": Float(0.7, min=0.0),
    "alpha_kl": Float(0.3, min=0.0),
    "temperature": Float(2.0, min=0.0, min_open=True),
    "kl_t2_scale": Bool(True),
    "prompt_len": Int(8, min=1),
    "gen_tokens": Int(24, min=1),
    "sample_temperature": Float(1.0, "0: greedy", min=0.0),
    "save_every": Int(10, min=1),
    "max_to_keep": Int(2, min=1),
    "resume": Bool(True, "continue from the checkpoints in the output directory (with --resume)"),
    "backend": Choice("auto", choices=("auto", "dense", "gather", "tiles", "ragged")),
    "write_checkpoint": Bool(False),
    "formats": ListOf(["hf"], item=Choice(None, choices=FORMATS), min_len=1),
    "checkpoint_dtype": Choice("", "\"\" = the student's fp32", choices=("", "float32", "bfloat16", "float16")),
}
# knobs of the kind, not of one training run
_KIND_ONLY = ("layers", "experts", "expert_choice", "modes", "train_set", "resume", "write_checkpoint", "formats",
              "checkpoint_dtype")
_TAIL = 3  # steps averaged for the initial / final training loss (fewer in short runs)


def check(knobs: dict, cfg) -> list[tuple[str, str]]:
    """Problems only the checkpoint's config reveals: (key, message)."""
    text = cfg.thinker.text
    if knobs["layers"] > text.num_layers:
        return [("layers", f"the teacher has {text.num_layers} layers")]
    if not text.top_k <= knobs["experts"] <= text.num_experts:
        return [("experts", f"need top_k={text.top_k} <= experts <= {text.num_experts}")]
    return []


def _train_config(ctx, knobs: dict, mode: str) -> DistillConfig:
    d = {k: v for k, v in knobs.items() if k not in _KIND_ONLY}
    eos = [ctx.cfg.im_end_token_id, ctx.cfg.pad_token_id]
    return DistillConfig.from_dict({**d, "mode": mode, "seed": ctx.seed, "eos_ids": eos})


def run(ctx) -> list[dict]:
    knobs = ctx.spec["distillation"]
    tcfg = ctx.text_cfg
    data = ctx.calibration() if knobs["train_set"] == "calibration" else ctx.thinker_eval()
    counts = None
    if knobs["expert_choice"] == "usage":
        counts = ctx.router_counts(eval_set=ctx.calibration())
    student0, scfg, info = make_student(ctx.text_params, tcfg, knobs["layers"], knobs["experts"],
                                        knobs["expert_choice"], counts)
    base = ctx.evaluate_thinker()
    common = dict(student_layers=scfg.num_layers, student_experts=scfg.num_experts)
    rows = [{"variant": "teacher (reference)", "student_layers": tcfg.num_layers, "student_experts": tcfg.num_experts,
             "param_bytes_fraction": 1.0, "steps": 0, **base}]
    init = ctx.evaluate_thinker(student0, scfg)
    rows.append({"variant": "student before training", **common,
                 "param_bytes_fraction": init["param_bytes"] / base["param_bytes"], "steps": 0, **init})

    art = ctx.artifact_dir("student")
    (art / "student.json").write_text(json.dumps({**info, "teacher_layers": tcfg.num_layers,
                                                  "teacher_experts": tcfg.num_experts}))
    histories = {}
    for mode in knobs["modes"]:
        config = _train_config(ctx, knobs, mode)
        trainer = DistillTrainer(ctx.text_params, tcfg, student0, scfg, data.input_ids, data.attention_mask, config,
                                 art / mode)
        t0 = time.perf_counter()
        try:
            history = trainer.run(resume=bool(knobs["resume"]), progress=ctx.progress)
        finally:
            trainer.close()
        seconds = time.perf_counter() - t0
        histories[mode] = history
        (art / f"{mode}_history.json").write_text(json.dumps(history))
        m = ctx.evaluate_thinker(trainer.params, scfg)
        losses = np.array([h["loss"] for h in history])
        tail = max(1, min(_TAIL, len(history) // 2))
        row = {"variant": f"student {mode}", **common, "param_bytes_fraction": m["param_bytes"] / base["param_bytes"],
               "steps": len(history), "initial_loss": float(losses[:tail].mean()),
               "final_loss": float(losses[-tail:].mean()),
               "final_ce": float(np.mean([h["ce"] for h in history[-tail:]])),
               "final_kl": float(np.mean([h["kl"] for h in history[-tail:]])),
               "train_seconds": round(seconds, 2), **m}
        if knobs["write_checkpoint"]:
            out = ctx.artifact_dir("student_checkpoint") / mode
            if out.exists():
                shutil.rmtree(out)
            saved = save_student(ctx.checkpoint, out, ctx.params, trainer.params, scfg, knobs["formats"],
                                 dtype=knobs["checkpoint_dtype"] or None, note={"experiment": ctx.spec.get("name"),
                                                                                "mode": mode, **info})
            row.update({f"checkpoint_{fmt}": str(ctx.final_path(d)) for fmt, d in saved["paths"].items()},
                       checkpoint_has_talker=saved["has_talker"])
        rows.append(row)
    ctx.save_figure(plot_loss_curves(histories, f"distillation: {tcfg.num_layers}→{scfg.num_layers} layers, "
                                                f"{tcfg.num_experts}→{scfg.num_experts} experts"), "distillation_loss")
    return rows
