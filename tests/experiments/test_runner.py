"""The experiment runner, the evaluation metrics, the routing sweep and modality routing on the tiny checkpoint."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from experiment_helpers import read_rows, write_experiment


def test_position_metrics_match_numpy():
    """loss / KL / agreement sums equal a direct numpy computation (masked positions ignored)."""
    import jax

    from omni_jax.experiments.evaluate import position_metrics

    rng = np.random.default_rng(0)
    lp = np.asarray(jax.nn.log_softmax(rng.normal(size=(2, 5, 7)).astype(np.float32)))
    rp = np.asarray(jax.nn.log_softmax(rng.normal(size=(2, 5, 7)).astype(np.float32)))
    tgt = rng.integers(0, 7, (2, 5)).astype(np.int32)
    valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)
    n, nll, kl, agree = (float(x) for x in position_metrics(lp, rp, tgt, valid))
    v = valid.astype(bool)
    assert n == v.sum()
    np.testing.assert_allclose(nll, -np.take_along_axis(lp, tgt[..., None], -1)[..., 0][v].sum(), rtol=1e-5)
    np.testing.assert_allclose(kl, (np.exp(rp) * (rp - lp)).sum(-1)[v].sum(), rtol=1e-5)
    assert agree == (lp.argmax(-1) == rp.argmax(-1))[v].sum()


def test_match_top_p_reaches_the_target():
    from omni_jax.experiments.routing_calibration import match_top_p, mean_kept

    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(16) * 0.3, size=500)
    p = -np.sort(-p, axis=-1)
    for k in (1.5, 2, 4, 6):
        top_p = match_top_p(p, k, 8)
        assert mean_kept(p, top_p, 8) >= k
        assert mean_kept(p, top_p - 1e-6, 8) < k  # the smallest such p


def test_routing_sweep(tiny_ckpt, tmp_path):
    """Runner output files, and metrics that mean what they say: the reference scores KL 0 / agreement 1,
    top-k variants use exactly k experts, matched top-p uses about the target, the talker sweep runs."""
    exp = write_experiment(tmp_path / "sweep.toml", "routing",
                           {"routing": {"thinker_top_k": [8, 4, 1], "top_p_matched": True, "talker_top_k": [2],
                                        "talker_prompts": 1, "talker_frames": 4}},
                           name="sweep", seed=3)
    from omni_jax.experiments.runner import run_experiment

    out, rows = run_experiment(exp, tiny_ckpt, tmp_path / "out", progress=False, log=lambda m: None)
    assert read_rows(out) == json.loads(json.dumps(rows, default=float))
    by = {r["variant"]: r for r in rows}
    ref = by["top-2 (reference)"]
    assert ref["kl_to_reference"] == pytest.approx(0.0, abs=1e-6) and ref["greedy_agreement"] == 1.0
    for k in (8, 4, 1):
        assert by[f"top-{k}"]["experts_per_token"] == pytest.approx(k)
        assert by[f"top-{k}"]["kl_to_reference"] > 1e-4  # a changed routing changes the distribution
    top_p = [r for r in rows if r["top_p"] is not None]
    assert {r["target_experts"] for r in top_p} == {4, 1}
    for r in top_p:  # calibrated on the unmodified router; later layers' routing moves a little
        assert abs(r["experts_per_token"] - r["target_experts"]) < 0.5, r
    talker = [r for r in rows if r["stack"] == "talker"]
    assert [r["top_k"] for r in talker] == [3, 2]
    assert talker[0]["kl_to_reference"] == pytest.approx(0.0, abs=1e-6) and talker[1]["kl_to_reference"] > 0
    assert talker[1]["experts_per_token"] == pytest.approx(2)
    # the results directory
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["seed"] == 3 and cfg["eval"]["max_tokens"] == 16 and cfg["checkpoint"] == str(tiny_ckpt)
    with open(out / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert "| variant |" in (out / "results.md").read_text()
    assert (out / "plots" / "routing_sweep.png").stat().st_size > 1000


def test_modality_routing(tiny_ckpt, tmp_path):
    """Every processed assignment of every real token is attributed to one modality: per layer the counts
    sum to tokens × top_k (dropless), and image / audio tokens are present."""
    exp = write_experiment(tmp_path / "mod.toml", "modality", {"modality": {"questions": ["Describe."]}})
    from omni_jax.experiments.runner import run_experiment

    out, rows = run_experiment(exp, tiny_ckpt, tmp_path / "out", progress=False, log=lambda m: None)
    counts = np.load(out / "artifacts" / "counts" / "modality_counts.npy")  # [modality, layer, expert]
    assert {r["variant"] for r in rows} == {"text", "image", "audio"}
    per_layer = counts.sum(-1)  # [modality, layer]
    assert (per_layer == per_layer[:, :1]).all()  # every layer sees every token
    for r in rows:
        assert r["assignments"] == r["tokens"] * 2 * 4  # top-2, 4 layers
        assert 0 <= r["js_vs_text" if r["variant"] != "text" else "js_vs_image"] <= np.log(2) + 1e-9
    assert (out / "plots" / "modality_heatmaps.png").is_file()


def test_bad_experiment_file_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("kind = \n")
    proc = subprocess.run([sys.executable, "-m", "omni_jax.experiments", "run", str(bad)], capture_output=True,
                          text=True)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"python -m omni_jax.experiments: error: {bad}: not valid TOML")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('kind = "nope"\n')
    proc = subprocess.run([sys.executable, "-m", "omni_jax.experiments", "run", str(unknown)], capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "unknown experiment kind 'nope'" in proc.stderr


def test_runs_are_reproducible(tiny_ckpt, tmp_path):
    """The same experiment file twice: every metric but the timings is identical."""
    exp = write_experiment(tmp_path / "again.toml", "routing",
                           {"routing": {"thinker_top_k": [4, 1], "top_p_matched": True, "talker_top_k": []}},
                           seed=7)
    from omni_jax.experiments.runner import run_experiment

    runs = [run_experiment(exp, tiny_ckpt, tmp_path / f"out{i}", progress=False, log=lambda m: None)[1]
            for i in range(2)]
    strip = [[{k: v for k, v in r.items() if not k.startswith("ms_")} for r in rows] for rows in runs]
    assert strip[0] == strip[1] and len(strip[0]) == 4
