"""Run one experiment file: check it, load the checkpoint, run the kind, write the results directory.

Everything that can be checked without the model is checked first (every key of the file, the
checkpoint's config against the kind's knobs, the results directory); the results are written into
``OUT.partial`` and renamed to ``OUT`` when complete (``results_dir.py``).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from omni_jax.experiments.context import RunContext
from omni_jax.experiments.report import write_results
from omni_jax.experiments.results_dir import DEFAULT_ROOT, ResultsDirectory
from omni_jax.experiments.schema import toml_repr
from omni_jax.experiments.spec import KINDS, ExperimentFileError, kind_module, load_spec

__all__ = ["KINDS", "kind_module", "resolve_checkpoint", "run_experiment"]


def resolve_checkpoint(spec: dict, checkpoint: str | Path | None, log=print) -> Path:
    """--checkpoint, else the file's ``checkpoint``, else the random-weight demo checkpoint (built once)."""
    from omni_jax.validation import check_checkpoint_dir

    if checkpoint is not None:
        return check_checkpoint_dir("checkpoint", checkpoint)
    if spec.get("checkpoint"):
        return Path(spec["checkpoint"])
    from omni_jax.demo import ensure_demo_checkpoint

    return ensure_demo_checkpoint(log=log)


def check_against_config(spec: dict, module, cfg) -> None:
    """The kind's checks that need the checkpoint's config (keep counts, student size, group size)."""
    check = getattr(module, "check", None)
    if check is None:
        return
    kind = spec["kind"]
    for key, problem in check(spec[kind], cfg):
        raise ExperimentFileError(f"{spec['file']}: [{kind}] {key} = {toml_repr(spec[kind][key])}: {problem}")


def run_experiment(path: str | Path, checkpoint: str | Path | None = None, out: str | Path | None = None,
                   overrides: dict | None = None, progress: bool = True, log=print, *, resume: bool = False,
                   overwrite: bool = False) -> tuple[Path, list[dict]]:
    """Run the experiment file ``path``; returns (results directory, rows).

    ``out`` (default results/NAME) must not exist unless ``resume`` (continue what is there: an interrupted
    run's ``OUT.partial``, or a finished ``OUT``) or ``overwrite`` (replace it once the new run completes).
    """
    from omni_jax.compilation import setup_compilation_cache
    from omni_jax.config import OmniConfig
    from omni_jax.demo import announce_if_demo
    from omni_jax.models.common import pure_params
    from omni_jax.processing.tokenizer import Tokenizer
    from omni_jax.weights import load_checkpoint

    spec = load_spec(path, overrides)
    module = kind_module(spec["kind"])
    if checkpoint is not None:
        resolve_checkpoint(spec, checkpoint)  # a bad --checkpoint fails before anything else
    results = ResultsDirectory(Path(out) if out is not None else DEFAULT_ROOT / spec["name"], resume=resume,
                               overwrite=overwrite, log=log)
    setup_compilation_cache()
    ckpt = resolve_checkpoint(spec, checkpoint, log)
    spec["checkpoint"] = str(ckpt)
    spec["random_weights"] = announce_if_demo(ckpt, log)
    cfg = OmniConfig.from_file(ckpt)
    check_against_config(spec, module, cfg)
    try:  # OUT.partial is created inside: a signal right after its mkdir still removes it
        work = results.open()
        random.seed(spec["seed"])
        np.random.seed(spec["seed"])
        t0 = time.perf_counter()
        cfg, model = load_checkpoint(ckpt, dtype=spec["dtype"], progress=progress)
        ctx = RunContext(spec, cfg, pure_params(model), ckpt, Tokenizer.from_dir(ckpt), work, progress,
                         final_dir=results.final)
        rows = module.run(ctx)
        spec["wall_seconds"] = round(time.perf_counter() - t0, 2)
        write_results(work, spec, rows)
    except BaseException:
        results.discard(resumable=getattr(module, "RESUMABLE", False))
        raise
    out_dir = results.publish()
    log(f"wrote {out_dir / 'results.md'} ({len(rows)} rows; metrics.json, metrics.csv, config.json, plots/)")
    return out_dir, rows
