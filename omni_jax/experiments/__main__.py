"""``python -m omni_jax.experiments run NAME|FILE [--checkpoint DIR] [--out DIR] [--resume | --overwrite]``
and ``python -m omni_jax.experiments list``."""

from __future__ import annotations

import argparse
import sys

from omni_jax.errors import OmniJaxError, UsageError, one_line

PROG = "python -m omni_jax.experiments"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UsageError (one line, exit code 2)."""

    def error(self, message):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog=PROG, description="Run an ablation experiment file (experiments/*.toml).")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    run = sub.add_parser("run", help="run one experiment and write its results directory")
    run.add_argument("experiment", help="a shipped experiment's name (see `list`), or a path to an experiment file")
    run.add_argument("--checkpoint", help="HF or converted checkpoint directory (default: the file's, else the "
                                          "random-weight demo checkpoint)")
    run.add_argument("--out", help="results directory (default: results/NAME)")
    again = run.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in an existing results directory (or its .partial)")
    again.add_argument("--overwrite", action="store_true",
                       help="replace an existing results directory (once the new run is complete)")
    run.add_argument("--seed", type=int, help="override the file's seed")
    run.add_argument("--dtype", choices=("float32", "bfloat16"), help="override the file's dtype")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub.add_parser("list", help="list the shipped experiment files (usable by name from any directory)")
    return ap


def list_experiments() -> int:
    import tomllib

    from omni_jax.experiments.spec import SHIPPED_DIR, shipped_experiments

    files = shipped_experiments()
    if not files:
        raise OmniJaxError(f"no experiment files found in {SHIPPED_DIR} (is the package installed completely?)")
    for p in files:
        try:
            description = tomllib.loads(p.read_text(encoding="utf-8")).get("description", "")
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            description = "(unreadable)"
        print(f"{p.stem:<18} {p}\n{'':<18} {description}")
    return 0


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "list":
            return list_experiments()
        from omni_jax.experiments.runner import run_experiment

        overrides = {k: v for k, v in (("seed", args.seed), ("dtype", args.dtype)) if v is not None}
        run_experiment(args.experiment, args.checkpoint, args.out, overrides, progress=not args.no_progress,
                       log=lambda m: print(m, file=sys.stderr), resume=args.resume, overwrite=args.overwrite)
    except OmniJaxError as e:
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    from omni_jax.atomic import install_interrupt_handlers

    install_interrupt_handlers()  # SIGINT / SIGTERM: clean up, publish nothing
    sys.exit(main())
