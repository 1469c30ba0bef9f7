"""The distillation experiment through the runner on the tiny checkpoint: a 1-layer, 4-expert student trained
a few steps off- and on-policy, evaluated, plotted, checkpointed, written as a loadable checkpoint, resumed.

On-policy sequences are prompt_len + gen_tokens = 16 tokens, the calibration set's padded length here, so
both modes share one compiled train step (1 layer: half the compile time of 2 on this machine;
expert_choice = "first" skips a router-count pass: "usage" is tested in test_distill.py).
"""

from __future__ import annotations

import json

import numpy as np

from experiment_helpers import read_rows, write_experiment

KNOBS = {"layers": 1, "experts": 4, "expert_choice": "first", "modes": ["off_policy", "on_policy"], "steps": 3, "save_every": 2,
         "batch_size": 2, "lr": 3e-3, "prompt_len": 8, "gen_tokens": 8, "backend": "dense",
         "write_checkpoint": True}


def test_distillation_experiment(tiny_ckpt, tmp_path):
    from omni_jax.experiments.runner import run_experiment
    from omni_jax.weights import load_checkpoint

    exp = write_experiment(tmp_path / "distill.toml", "distillation",
                           {"eval": {"max_examples": 4, "max_tokens": 16, "batch_size": 4, "decode_tokens": 0},
                            "calibration": {"max_examples": 4, "max_tokens": 16},
                            "distillation": KNOBS}, name="distill", seed=0)
    out, rows = run_experiment(exp, tiny_ckpt, tmp_path / "out", progress=False, log=lambda m: None)
    assert read_rows(out) == json.loads(json.dumps(rows, default=float))
    by = {r["variant"]: r for r in rows}
    assert list(by) == ["teacher (reference)", "student before training", "student off_policy",
                        "student on_policy"]
    assert by["teacher (reference)"]["kl_to_reference"] < 1e-6
    for name in ("student off_policy", "student on_policy"):
        r = by[name]
        assert (r["student_layers"], r["student_experts"], r["steps"]) == (1, 4, 3)
        assert np.isfinite([r["final_loss"], r["final_kl"], r["kl_to_reference"]]).all()
        assert 0 < r["param_bytes_fraction"] < 1
        assert not r["checkpoint_has_talker"]  # 1 layer < the Talker's tap (accept_hidden_layer = 2)
        assert load_checkpoint(r["checkpoint_hf"])[0].thinker.text.num_layers == 1
        hist = json.loads((out / "artifacts" / "student" / f"{name.split()[1]}_history.json").read_text())
        assert [h["step"] for h in hist] == [1, 2, 3]
        assert (out / "artifacts" / "student" / name.split()[1] / "3").is_dir()  # Orbax checkpoint at the end
    assert by["student off_policy"]["final_loss"] < by["student off_policy"]["initial_loss"]
    assert (out / "plots" / "distillation_loss.png").stat().st_size > 1000

    # run again with more steps in the same directory (--resume): resumes from step 3, keeps the first 3 losses
    first = json.loads((out / "artifacts" / "student" / "off_policy_history.json").read_text())
    exp2 = write_experiment(tmp_path / "distill2.toml", "distillation",
                            {"eval": {"max_examples": 4, "max_tokens": 16, "batch_size": 4, "decode_tokens": 0},
                             "calibration": {"max_examples": 4, "max_tokens": 16},
                             "distillation": {**KNOBS, "steps": 4, "modes": ["off_policy"],
                                              "write_checkpoint": False}}, name="distill", seed=0)
    _, rows2 = run_experiment(exp2, tiny_ckpt, tmp_path / "out", progress=False, log=lambda m: None, resume=True)
    again = json.loads((out / "artifacts" / "student" / "off_policy_history.json").read_text())
    assert again[:3] == first and len(again) == 4
    assert rows2[-1]["steps"] == 4
