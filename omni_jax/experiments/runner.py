"""Run one experiment file: load the checkpoint, run the kind, write the results directory."""

from __future__ import annotations

import importlib
import random
import time
from pathlib import Path

import numpy as np

from omni_jax.experiments.context import RunContext
from omni_jax.experiments.report import write_results
from omni_jax.experiments.spec import ExperimentFileError, load_spec

KINDS = ("routing", "pruning", "quantization", "distillation", "modality")


def kind_module(kind: str):
    if kind not in KINDS:
        raise ExperimentFileError(f"unknown experiment kind {kind!r}; choose from {', '.join(KINDS)}")
    return importlib.import_module(f"omni_jax.experiments.kinds.{kind}")


def resolve_checkpoint(spec: dict, checkpoint: str | Path | None, log=print) -> Path:
    if checkpoint is not None:
        return Path(checkpoint)
    if spec.get("checkpoint"):
        return Path(spec["checkpoint"])
    from omni_jax.demo import RANDOM_WEIGHTS_NOTICE, ensure_demo_checkpoint

    log(RANDOM_WEIGHTS_NOTICE)
    return ensure_demo_checkpoint(log=log)


def run_experiment(path: str | Path, checkpoint: str | Path | None = None, out: str | Path | None = None,
                   overrides: dict | None = None, progress: bool = True, log=print) -> tuple[Path, list[dict]]:
    """Run the experiment file ``path``; returns (results directory, rows)."""
    from omni_jax.models.common import pure_params
    from omni_jax.processing.tokenizer import Tokenizer
    from omni_jax.weights import load_checkpoint

    from omni_jax.compilation import setup_compilation_cache

    spec = load_spec(path, overrides)
    module = kind_module(spec["kind"])
    setup_compilation_cache()
    ckpt = resolve_checkpoint(spec, checkpoint, log)
    spec["checkpoint"] = str(ckpt)
    out_dir = Path(out) if out is not None else Path("results") / spec["name"]
    random.seed(spec["seed"])
    np.random.seed(spec["seed"])
    t0 = time.perf_counter()
    cfg, model = load_checkpoint(ckpt, dtype=spec["dtype"], progress=progress)
    ctx = RunContext(spec, cfg, pure_params(model), ckpt, Tokenizer.from_dir(ckpt), out_dir, progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = module.run(ctx)
    spec["wall_seconds"] = round(time.perf_counter() - t0, 2)
    paths = write_results(out_dir, spec, rows)
    log(f"wrote {paths['markdown']} ({len(rows)} rows; metrics.json, metrics.csv, config.json, plots/)")
    return out_dir, rows
