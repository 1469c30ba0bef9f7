"""``python -m omni_jax.bench fuzz [--cases N] [--seed S] [--targets a,b] [--json]``: fuzz every input decoder.

For each target (images, audio, video, safetensors shards, the converter, experiment files, command-line
numbers) ``N`` seeded mutations of a small real file (or random bytes / out-of-range values) are decoded,
each under a time limit; prints, per target, how many cases gave a valid result and how many a one-line
OmniJaxError. Any other outcome (another exception, a hang, a partial output, a multi-line message) is a
bug: it is printed with the case that triggered it, saved under ``--save DIR``, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from omni_jax.bench.fuzz_targets import (NUMERIC_FLAGS, FuzzFailure, flags_checkpoint, make_targets, random_flags,
                                         random_mutation, run_case, run_flags_case)

FLAG_TARGET = "cli-flags"


def run_cases(name: str, cases: int, draw: Callable, failures: list, save: Path | None) -> tuple[dict, float]:
    """``cases`` cases of one target, each in its own empty folder: ``draw()`` gives (what was mutated, the input
    bytes or None, the case as a function of its folder). Returns the outcome counts and the seconds taken;
    every failure is appended to ``failures`` (its input written under ``save`` if given)."""
    counts = {"valid": 0, "error": 0, "failed": 0}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as d:
        for i in range(cases):
            kind, data, case = draw()
            work = Path(d) / f"case{i}"
            work.mkdir()
            try:
                counts[case(work)] += 1
            except FuzzFailure as e:
                counts["failed"] += 1
                failures.append({"target": name, "case": i, "mutation": kind, "error": str(e)})
                if save is not None and data is not None:
                    save.mkdir(parents=True, exist_ok=True)
                    (save / f"{name}-{i}.bin").write_bytes(data)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return counts, time.perf_counter() - t0


def print_row(name: str, cases: int, counts: dict, seconds: float, note: str) -> None:
    print(f"{name:<12} {cases:>6} {counts['valid']:>6} {counts['error']:>6} {counts['failed']:>6} {seconds:>7.1f}   "
          f"{note}", flush=True)


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="python -m omni_jax.bench fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=2000, help="cases per target (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", default=None, help="comma-separated subset (default: all)")
    ap.add_argument("--save", type=Path, default=None, help="write each failing input into this folder")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    names = args.targets.split(",") if args.targets else None
    targets = make_targets(None if names is None else [n for n in names if n != FLAG_TARGET])
    with_flags = names is None or FLAG_TARGET in names
    report: dict = {}
    failures = []
    print(f"{'target':<12} {'cases':>6} {'valid':>6} {'error':>6} {'failed':>6} {'s':>7}   mutations")
    for name, target in targets.items():
        rng = np.random.default_rng([args.seed, sum(map(ord, name))])
        kinds: dict[str, int] = {}

        def draw(rng=rng, kinds=kinds, target=target):
            kind, data = random_mutation(target.sample, rng)
            kinds[kind] = kinds.get(kind, 0) + 1
            return kind, data, lambda work: run_case(target, data, work)

        counts, seconds = run_cases(name, args.cases, draw, failures, args.save)
        report[name] = {**counts, "cases": args.cases, "seconds": round(seconds, 1), "mutations": kinds}
        print_row(name, args.cases, counts, seconds, ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    if with_flags:
        rng = np.random.default_rng([args.seed, 7])
        with tempfile.TemporaryDirectory(prefix="fuzz-flags-") as d:
            ckpt = flags_checkpoint(Path(d) / "ckpt")

            def draw_flags():
                flags = random_flags(rng)
                return " ".join(flags), None, lambda work: run_flags_case(ckpt, flags, work)

            counts, seconds = run_cases(FLAG_TARGET, args.cases, draw_flags, failures, None)
        report[FLAG_TARGET] = {**counts, "cases": args.cases, "seconds": round(seconds, 1)}
        print_row(FLAG_TARGET, args.cases, counts, seconds, f"1-3 of the {len(NUMERIC_FLAGS)} numeric flags per case")
    for f in failures[:20]:
        print(f"FAILED {f['target']} case {f['case']} ({f['mutation']}): {f['error']}", file=sys.stderr)
    result = {"benchmark": "fuzz", "seed": args.seed, "targets": report, "failures": failures}
    if args.json:
        print(json.dumps(result))
    if failures:
        sys.exit(1)
    return result
