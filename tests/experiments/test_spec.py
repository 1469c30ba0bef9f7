"""Experiment files are strict (every key typed and ranged, per kind, before any work) and results
directories appear only complete: in process, without a model, except the two runs at the end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiment_helpers import SMALL_EVAL, write_experiment
from omni_jax.errors import InputFileError, UsageError
from omni_jax.experiments.__main__ import main as experiments_main
from omni_jax.experiments.results_dir import ResultsDirectory
from omni_jax.experiments.spec import ExperimentFileError, load_spec, shipped_experiments

# (file text, the message after "FILE: ") for the mistakes a researcher makes
BAD_FILES = [
    ('kind = "routing"\nseeed = 1\n', "unknown key 'seeed' in [run] (did you mean 'seed'?)"),
    ('kind = "routing"\n[routing]\nthinker_topk = [4]\n',
     "unknown key 'thinker_topk' in [routing] (did you mean 'thinker_top_k'?)"),
    ('kind = "routing"\n[routing]\nthinker_top_k = "four"\n',
     '[routing] thinker_top_k = "four": expected a list of integers'),
    ('kind = "routing"\n[routing]\nthinker_top_k = [4, "four"]\n',
     '[routing] thinker_top_k = [4, "four"]: item 2 ("four"): expected an integer'),
    ('kind = "routing"\n[eval]\nbatch_size = 0\n', "[eval] batch_size = 0: must be >= 1"),
    ('kind = "routing"\n[eval]\nmax_tokens = 1.5\n', "[eval] max_tokens = 1.5: expected an integer"),
    ('kind = "routing"\n[eval]\npath = "no/such.jsonl"\n', '[eval] path = "no/such.jsonl": no such file'),
    ('kind = "routing"\nseed = -1\n', "[run] seed = -1: must be >= 0"),
    ('kind = "routing"\ndtype = "float8"\n', '[run] dtype = "float8": choose from "float32", "bfloat16"'),
    ('kind = "routing"\nname = "../x"\n', "[run] name = \"../x\": must be a non-empty name"),
    ('kind = "routing"\ncheckpoint = "/no/such/dir"\n', '[run] checkpoint = "/no/such/dir": no such directory'),
    ('kind = "routing"\n[calibration]\nmax_examples = 3\n',
     "table [calibration] is not used by 'routing' experiments (they read [eval], [routing])"),
    ('kind = "routing"\n[routng]\ntalker_top_k = []\n', "unknown table [routng] (did you mean [routing]?)"),
    ('kind = "routing"\n[routing.sub]\nx = 1\n', "unknown key 'sub' in [routing]"),
    ('kind = "routing"\n[routing.talker_top_k]\nx = 1\n', "[routing] talker_top_k is a table; expected a value"),
    ('kind = "routing"\n[seed]\nx = 1\n', "[run] seed is a table; expected a value"),
    ('seed = 1\n', "missing the 'kind' key"),
    ('kind = "nope"\n', "unknown experiment kind 'nope'"),
    ('kind = 3\n', "unknown experiment kind 3"),
    ('kind = \n', "not valid TOML"),
    ('kind = "pruning"\n[pruning]\nkeep = [0, 0.5]\n', "[pruning] keep = [0, 0.5]: item 1 (0): must be >= 1"),
    ('kind = "pruning"\n[pruning]\nkeep = [1.5]\n', "[pruning] keep = [1.5]: item 1 (1.5): must be <= 1.0"),
    ('kind = "pruning"\n[pruning]\nkeep = []\n', "[pruning] keep = []: needs at least 1 item"),
    ('kind = "pruning"\n[pruning]\nformats = ["gguf"]\n', '[pruning] formats = ["gguf"]: item 1 ("gguf"): choose from'),
    ('kind = "quantization"\n[quantization]\nbits = [3]\n', "[quantization] bits = [3]: item 1 (3): choose from 8, 4"),
    ('kind = "quantization"\n[quantization]\ngroup_size = 0\n', "[quantization] group_size = 0: must be >= 1"),
    ('kind = "distillation"\n[distillation]\nlr = 0\n', "[distillation] lr = 0: must be > 0.0"),
    ('kind = "distillation"\n[distillation]\nmodes = ["online"]\n', '[distillation] modes = ["online"]: item 1'),
    ('kind = "distillation"\n[distillation]\nresume = "yes"\n',
     '[distillation] resume = "yes": expected true or false'),
    ('kind = "distillation"\n[distillation]\nbatch_size = 0\n', "[distillation] batch_size = 0: must be >= 1"),
    ('kind = "modality"\n[modality]\nimages = ["missing.png"]\n', '[modality] images = ["missing.png"]: item 1'),
    ('kind = "modality"\n[modality]\nquestions = []\n', "[modality] questions = []: needs at least 1 item"),
    ('kind = "modality"\n[eval]\nbatch_size = 2\n', "table [eval] is not used by 'modality' experiments"),
]


@pytest.mark.parametrize("text,message", BAD_FILES, ids=[m[:40] for _, m in BAD_FILES])
def test_bad_experiment_files_name_file_table_and_key(tmp_path, text, message):
    path = tmp_path / "exp.toml"
    path.write_text(text)
    with pytest.raises(ExperimentFileError) as e:
        load_spec(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    assert msg[len(f"{path}: "):].startswith(message), msg


def test_resolved_spec_has_every_key_and_only_known_ones(tmp_path):
    path = write_experiment(tmp_path / "ok.toml", "routing", {"routing": {"thinker_top_k": [4], "talker_frames": 3}},
                            seed=5)
    spec = load_spec(path, {"dtype": "bfloat16"})
    assert spec["seed"] == 5 and spec["dtype"] == "bfloat16" and spec["name"] == "ok"
    assert spec["routing"] == {"thinker_top_k": [4], "top_p_matched": True, "talker_top_k": [6, 4, 2],
                               "talker_prompts": 2, "talker_frames": 3}
    assert spec["eval"] == {"path": None, **SMALL_EVAL}
    assert "calibration" not in spec
    with pytest.raises(UsageError, match=r"^seed \(--seed\) = -2: must be an integer >= 0$"):
        load_spec(path, {"seed": -2})


def test_every_shipped_file_is_valid_and_found_from_anywhere(tmp_path, monkeypatch, capsys):
    shipped = shipped_experiments()
    assert {p.stem for p in shipped} >= {"topk_sweep", "expert_pruning", "quantization", "distillation",
                                         "modality_routing"}
    monkeypatch.chdir(tmp_path)  # not the repository root
    for p in shipped:
        assert load_spec(p.stem)["file"] == str(p)
        assert load_spec(f"experiments/{p.stem}")["file"] == str(p)
    assert experiments_main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(str(p) in out for p in shipped)


def test_cli_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "routing"\nseeed = 1\n')
    assert experiments_main(["run", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"python -m omni_jax.experiments: error: {bad}: unknown key 'seeed' in [run] (did you mean 'seed'?)"]
    assert experiments_main(["run", "topk_sweep", "--seed", "x"]) == 2
    assert experiments_main(["run", "topk_sweep", "--resume", "--overwrite"]) == 2
    assert experiments_main(["run", "topk_sweep", "--seed", "-1"]) == 2
    assert experiments_main(["run", "no_such_experiment"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("python -m omni_jax.experiments: error: ") for line in lines)
    out = tmp_path / "old_results"
    out.mkdir()
    (out / "results.md").write_text("earlier")
    assert experiments_main(["run", "topk_sweep", "--out", str(out)]) == 2  # refused before anything is loaded
    assert capsys.readouterr().err.strip() == (f"python -m omni_jax.experiments: error: {out}: results already exist "
                                               "(--resume to continue that run, --overwrite to replace them, or "
                                               "--out elsewhere)")
    assert (out / "results.md").read_text() == "earlier"


# ------------------------------------------------------------------------------------------ results directories


def test_results_directory_refuses_existing_then_resumes_or_overwrites(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.md").write_text("old")
    with pytest.raises(UsageError, match="already exist.*--resume.*--overwrite"):
        ResultsDirectory(out)
    with pytest.raises(InputFileError, match="does not exist"):
        ResultsDirectory(tmp_path / "missing" / "out")

    rd = ResultsDirectory(out, overwrite=True, log=lambda m: None)
    work = rd.open()
    assert work == tmp_path / "out.partial" and list(work.iterdir()) == []
    assert (out / "results.md").read_text() == "old"  # untouched until the new run completes
    (work / "results.md").write_text("new")
    rd.publish()
    assert (out / "results.md").read_text() == "new" and not work.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    rd = ResultsDirectory(out, resume=True, log=lambda m: None)
    work = rd.open()
    assert (work / "results.md").read_text() == "new"  # a copy: the finished run stays intact meanwhile
    (work / "results.md").write_text("continued")
    assert (out / "results.md").read_text() == "new"
    rd.discard(resumable=False)  # a failed continuation: the finished results are still there
    assert not work.exists() and (out / "results.md").read_text() == "new"


def test_failed_resumable_run_keeps_its_checkpoints_only(tmp_path):
    out = tmp_path / "out"
    rd = ResultsDirectory(out, log=lambda m: None)
    rd.open()
    rd.discard(resumable=True)  # nothing to resume from: nothing left
    assert list(tmp_path.iterdir()) == []
    rd = ResultsDirectory(out, log=lambda m: None)
    ck = rd.open() / "artifacts" / "student" / "off_policy" / "2"
    ck.mkdir(parents=True)
    (ck / "state").write_text("x")
    rd.discard(resumable=True)
    assert (tmp_path / "out.partial").is_dir() and not out.exists()
    with pytest.raises(UsageError, match="interrupted run.*--resume"):
        ResultsDirectory(out)
    assert ResultsDirectory(out, resume=True, log=lambda m: None).open() == tmp_path / "out.partial"


# ------------------------------------------------------------------------------------------ two real runs


def _marked_copy(src: Path, dst: Path) -> Path:
    """The tiny checkpoint (linked, not copied) marked as random weights, as the demo's directory is."""
    from omni_jax.processing.assets import RANDOM_WEIGHTS_MARKER

    dst.mkdir()
    for f in src.iterdir():
        os.symlink(f, dst / f.name)
    (dst / RANDOM_WEIGHTS_MARKER).write_text("random\n")
    return dst


def test_failed_run_keeps_old_results_and_random_weights_are_labelled(tiny_thinker_only_ckpt, tmp_path,
                                                                        monkeypatch):
    from omni_jax.experiments import context
    from omni_jax.experiments.kinds import routing
    from omni_jax.experiments.runner import run_experiment

    ckpt = _marked_copy(tiny_thinker_only_ckpt, tmp_path / "demo_like")
    exp = write_experiment(tmp_path / "r.toml", "routing",
                           {"eval": {**SMALL_EVAL, "max_examples": 2, "batch_size": 2, "decode_tokens": 0},
                            "routing": {"thinker_top_k": [], "top_p_matched": False, "talker_top_k": []}}, name="r")
    labels = []
    real_save = context.RunContext.save_figure

    def save_figure(self, fig, name):
        path = real_save(self, fig, name)
        labels.extend(t.get_text() for t in fig.texts)
        return path

    monkeypatch.setattr(context.RunContext, "save_figure", save_figure)
    out, rows = run_experiment(exp, ckpt, tmp_path / "out", progress=False, log=lambda m: None)
    assert len(rows) == 1 and "RANDOM weights" in (out / "results.md").read_text()
    assert labels == [context.RANDOM_WEIGHTS_LABEL]
    assert json.loads((out / "config.json").read_text())["random_weights"] is True
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def broken(ctx):
        (ctx.out_dir / "half_written.txt").write_text("x")
        raise RuntimeError("the kind failed")

    monkeypatch.setattr(routing, "run", broken)
    with pytest.raises(RuntimeError, match="the kind failed"):
        run_experiment(exp, ckpt, out, progress=False, log=lambda m: None, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_like", "out", "r.toml"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_run_leaves_no_results_directory(tiny_thinker_only_ckpt, tmp_path, sig):
    """A real run in a subprocess, signalled once it works in OUT.partial: no OUT, no OUT.partial."""
    exp = write_experiment(tmp_path / "r.toml", "routing",
                           {"eval": {**SMALL_EVAL, "max_examples": 2, "batch_size": 2, "decode_tokens": 0},
                            "routing": {"thinker_top_k": [1], "top_p_matched": False, "talker_top_k": []}}, name="r")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "omni_jax.experiments", "run", str(exp), "--checkpoint",
                             str(tiny_thinker_only_ckpt), "--out", str(out), "--no-progress"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "out.partial").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert re.search(r"interrupted", err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.toml"]
