"""The expert-pruning experiment through the runner on the tiny checkpoint (8 experts, top-2, 4 layers):
rows, sliced == mask, usage artifacts, plot, and the written checkpoints (traceable, loadable)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiment_helpers import SMALL_EVAL, read_rows, write_experiment


def test_pruning_experiment(tiny_ckpt, tmp_path):
    from omni_jax.config import OmniConfig
    from omni_jax.experiments.pruning import read_pruning_record
    from omni_jax.experiments.runner import run_experiment
    from omni_jax.weights import load_flat_params

    exp = write_experiment(tmp_path / "prune.toml", "pruning",
                           {"eval": {**SMALL_EVAL, "decode_tokens": 0},  # decode timing: compiles, not tested here
                            "calibration": {"max_examples": 4, "max_tokens": 16},
                            "pruning": {"keep": [0.75, 6], "mask_variant": True, "write_checkpoints": True,
                                        "formats": ["hf", "orbax"]}},
                           name="prune", seed=0)
    out, rows = run_experiment(exp, tiny_ckpt, tmp_path / "out", progress=False, log=lambda m: None)
    assert read_rows(out) == json.loads(json.dumps(rows, default=float))
    by = {r["variant"]: r for r in rows}
    # 0.75 of 8 and 6 are the same keep count: evaluated once
    assert list(by) == ["all 8 experts (reference)", "keep 6/8 (sliced)", "keep 6/8 (mask)"]
    ref = by["all 8 experts (reference)"]
    assert ref["kl_to_reference"] == pytest.approx(0.0, abs=1e-6) and ref["greedy_agreement"] == 1.0
    counts = np.load(out / "artifacts" / "pruning" / "usage_counts.npy")
    cfg = OmniConfig.from_file(tiny_ckpt)
    assert counts.shape == (cfg.thinker.text.num_layers, 8) and counts.sum() > 0
    for m in (6,):
        s, k = by[f"keep {m}/8 (sliced)"], by[f"keep {m}/8 (mask)"]
        # the two forms are the same model: same metrics (up to float summation order)
        for metric in ("kl_to_reference", "loss", "greedy_agreement", "experts_per_token"):
            assert s[metric] == pytest.approx(k[metric], rel=1e-4, abs=1e-6), (m, metric)
        assert s["kl_to_reference"] > 1e-4  # pruning changes the model
        assert s["experts_per_token"] == pytest.approx(2.0)
        assert s["param_bytes_fraction"] < 1.0 and k["param_bytes_fraction"] == 1.0
        assert s["expert_param_bytes"] == pytest.approx(ref["expert_param_bytes"] * m / 8)
        kept = np.asarray(s["kept_experts"])
        assert kept.shape == (cfg.thinker.text.num_layers, m)
        # the kept experts are the most used of each layer
        for layer in range(kept.shape[0]):
            dropped = np.setdiff1d(np.arange(8), kept[layer])
            assert counts[layer, kept[layer]].min() >= counts[layer, dropped].max()
        assert 0 < s["calibration_coverage"] <= 1.0
        # the written checkpoints: traceable and loadable in both forms
        hf_dir, orbax_dir = s["checkpoint_hf"], s["checkpoint_orbax"]
        for d in (hf_dir, orbax_dir):
            assert OmniConfig.from_file(d).thinker.text.num_experts == m
            assert read_pruning_record(d)["thinker"]["kept_experts"] == kept.tolist()
        pc = OmniConfig.from_file(hf_dir)
        a, b = load_flat_params(hf_dir, pc), load_flat_params(orbax_dir, pc)
        assert all(np.array_equal(a[n], b[n]) for n in a)
    assert json.loads((out / "artifacts" / "pruning" / "kept_experts.json").read_text()).keys() == {"6"}
    assert (out / "plots" / "expert_usage.png").stat().st_size > 1000
    assert "| variant |" in (out / "results.md").read_text()


def test_keep_count_below_top_k_fails_cleanly(tiny_ckpt, tmp_path):
    from omni_jax.experiments.runner import run_experiment
    from omni_jax.experiments.spec import ExperimentFileError

    exp = write_experiment(tmp_path / "bad.toml", "pruning", {"pruning": {"keep": [1]}}, name="bad")
    with pytest.raises(ExperimentFileError, match=r"\[pruning\] keep = \[1\]: .*top_k"):  # before loading the model
        run_experiment(exp, tiny_ckpt, tmp_path / "out", progress=False, log=lambda m: None)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
