"""``python -m omni_jax.experiments run experiments/NAME [--checkpoint DIR] [--out DIR]``"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m omni_jax.experiments",
                                 description="Run an ablation experiment file (experiments/*.toml).")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment and write its results directory")
    run.add_argument("experiment", help="experiments/NAME(.toml) or a path to an experiment file")
    run.add_argument("--checkpoint", help="HF or converted checkpoint directory (default: the file's, else the "
                                          "random-weight demo checkpoint)")
    run.add_argument("--out", help="results directory (default: results/NAME)")
    run.add_argument("--seed", type=int, help="override the file's seed")
    run.add_argument("--dtype", choices=("float32", "bfloat16"), help="override the file's dtype")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub.add_parser("list", help="list the shipped experiment files")
    args = ap.parse_args(argv)
    if args.command == "list":
        from pathlib import Path

        for p in sorted(Path("experiments").glob("*.toml")):
            print(p)
        return 0
    from omni_jax.experiments.runner import run_experiment

    overrides = {k: v for k, v in (("seed", args.seed), ("dtype", args.dtype)) if v is not None}
    try:
        run_experiment(args.experiment, args.checkpoint, args.out, overrides, progress=not args.no_progress,
                       log=lambda m: print(m, file=sys.stderr))
    except ValueError as e:  # our errors are ValueError subclasses with one-line messages
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
