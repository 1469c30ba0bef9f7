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
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from omni_jax.bench.fuzz_targets import (NUMERIC_FLAGS, FuzzFailure, flags_checkpoint, make_targets, random_flags,
                                         random_mutation, run_case, run_flags_case)

FLAG_TARGET = "cli-flags"


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
        counts = {"valid": 0, "error": 0, "failed": 0}
        kinds: dict[str, int] = {}
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as d:
            for i in range(args.cases):
                kind, data = random_mutation(target.sample, rng)
                kinds[kind] = kinds.get(kind, 0) + 1
                work = Path(d) / f"case{i}"
                work.mkdir()
                try:
                    counts[run_case(target, data, work)] += 1
                except FuzzFailure as e:
                    counts["failed"] += 1
                    failures.append({"target": name, "case": i, "mutation": kind, "error": str(e)})
                    if args.save is not None:
                        args.save.mkdir(parents=True, exist_ok=True)
                        (args.save / f"{name}-{i}.bin").write_bytes(data)
                finally:
                    import shutil

                    shutil.rmtree(work, ignore_errors=True)
        seconds = time.perf_counter() - t0
        report[name] = {**counts, "cases": args.cases, "seconds": round(seconds, 1), "mutations": kinds}
        mut = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        print(f"{name:<12} {args.cases:>6} {counts['valid']:>6} {counts['error']:>6} {counts['failed']:>6} "
              f"{seconds:>7.1f}   {mut}", flush=True)
    if with_flags:
        rng = np.random.default_rng([args.seed, 7])
        counts = {"valid": 0, "error": 0, "failed": 0}
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="fuzz-flags-") as d:
            ckpt = flags_checkpoint(Path(d) / "ckpt")
            for i in range(args.cases):
                flags = random_flags(rng)
                work = Path(d) / f"case{i}"
                work.mkdir()
                try:
                    counts[run_flags_case(ckpt, flags, work)] += 1
                except FuzzFailure as e:
                    counts["failed"] += 1
                    failures.append({"target": FLAG_TARGET, "case": i, "mutation": " ".join(flags), "error": str(e)})
                finally:
                    import shutil

                    shutil.rmtree(work, ignore_errors=True)
        seconds = time.perf_counter() - t0
        report[FLAG_TARGET] = {**counts, "cases": args.cases, "seconds": round(seconds, 1)}
        print(f"{FLAG_TARGET:<12} {args.cases:>6} {counts['valid']:>6} {counts['error']:>6} {counts['failed']:>6} "
              f"{seconds:>7.1f}   1-3 of the {len(NUMERIC_FLAGS)} numeric flags per case",
              flush=True)
    for f in failures[:20]:
        print(f"FAILED {f['target']} case {f['case']} ({f['mutation']}): {f['error']}", file=sys.stderr)
    result = {"benchmark": "fuzz", "seed": args.seed, "targets": report, "failures": failures}
    if args.json:
        print(json.dumps(result))
    if failures:
        sys.exit(1)
    return result
