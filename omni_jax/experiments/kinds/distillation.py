"""Knowledge distillation: a smaller student of the Thinker's text model (fewer layers, fewer experts per
layer), initialised from the teacher by surgery and trained on the teacher's logits (omni_jax/experiments/
distill.py), then evaluated against the unmodified Thinker.

Knobs (``[distillation]``, defaults in DEFAULTS): ``layers`` (student depth: evenly spaced teacher layers,
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

from omni_jax.experiments.distill import DistillConfig, DistillError, DistillTrainer, make_student, plot_loss_curves
from omni_jax.experiments.distill import save_student

DEFAULTS = {
    "layers": 2, "experts": 4, "expert_choice": "usage", "modes": ["off_policy", "on_policy"],
    "train_set": "calibration", "steps": 40, "lr": 1e-3, "schedule": "constant", "warmup_steps": 0,
    "weight_decay": 0.0, "grad_clip": 1.0, "batch_size": 4, "alpha_ce": 0.7, "alpha_kl": 0.3,
    "temperature": 2.0, "kl_t2_scale": True, "prompt_len": 8, "gen_tokens": 24, "sample_temperature": 1.0,
    "save_every": 10, "max_to_keep": 2, "resume": True, "backend": "auto",
    "write_checkpoint": False, "formats": ["hf"], "checkpoint_dtype": "",
}
# knobs of the kind, not of one training run
_KIND_ONLY = ("layers", "experts", "expert_choice", "modes", "train_set", "resume", "write_checkpoint", "formats",
              "checkpoint_dtype")
_TAIL = 3  # steps averaged for the initial / final training loss (fewer in short runs)


def _knobs(ctx) -> dict:
    knobs = {**DEFAULTS, **ctx.spec.get("distillation", {})}
    ctx.spec["distillation"] = knobs
    unknown = sorted(set(knobs) - set(DEFAULTS))
    if unknown:
        raise DistillError(f"[distillation] unknown setting {unknown[0]!r}")
    modes = knobs["modes"]
    if not isinstance(modes, list) or not modes or not set(modes) <= {"off_policy", "on_policy"}:
        raise DistillError(f"[distillation] modes = {modes!r}: a non-empty list of off_policy / on_policy")
    if knobs["train_set"] not in ("calibration", "eval"):
        raise DistillError(f"[distillation] train_set = {knobs['train_set']!r}: calibration or eval")
    return knobs


def _train_config(ctx, knobs: dict, mode: str) -> DistillConfig:
    d = {k: v for k, v in knobs.items() if k not in _KIND_ONLY}
    eos = [ctx.cfg.im_end_token_id, ctx.cfg.pad_token_id]
    return DistillConfig.from_dict({**d, "mode": mode, "seed": ctx.seed, "eos_ids": eos})


def run(ctx) -> list[dict]:
    knobs = _knobs(ctx)
    tcfg = ctx.text_cfg
    data = ctx.calibration() if knobs["train_set"] == "calibration" else ctx.thinker_eval()
    counts = None
    if knobs["expert_choice"] == "usage":
        counts = ctx.router_counts(eval_set=ctx.calibration())
    student0, scfg, info = make_student(ctx.text_params, tcfg, int(knobs["layers"]), int(knobs["experts"]),
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
            row.update({f"checkpoint_{fmt}": str(d) for fmt, d in saved["paths"].items()},
                       checkpoint_has_talker=saved["has_talker"])
        rows.append(row)
    ctx.save_figure(plot_loss_curves(histories, f"distillation: {tcfg.num_layers}→{scfg.num_layers} layers, "
                                                f"{tcfg.num_experts}→{scfg.num_experts} experts"), "distillation_loss")
    return rows
