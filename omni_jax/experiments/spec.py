"""Experiment files: one small TOML file per experiment, checked key by key against the kind's schema.

    name = "topk_sweep"           # the run's own keys: the [run] table of error messages
    kind = "routing"              # a module omni_jax/experiments/kinds/<kind>.py
    seed = 0
    description = "..."
    [eval]                        # optional, for the kinds that evaluate: the defaults in EVAL
    [<kind>]                      # the kind's knobs: its module's SCHEMA

Every key is checked before anything is loaded: an unknown key or table (with the closest known name),
a wrong type or a value out of range fails with one line naming the file, the table and the key. The
resolved spec (every key, defaults filled in) is what the run uses and what its config.json records.

The shipped experiment files live in ``omni_jax/experiments/shipped/`` (package data; the repository's
``experiments/`` links to them), so ``NAME`` finds one from any working directory.
"""

from __future__ import annotations

import difflib
import importlib
import tomllib
from pathlib import Path

from omni_jax.errors import InputFileError, UsageError
from omni_jax.experiments.schema import (Choice, ExistingPath, Field, Int, Name, Problem, Str, defaults,
                                         toml_repr)

KINDS = ("routing", "pruning", "quantization", "distillation", "modality")
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
RUN_TABLE = "run"  # what messages call the file's top-level keys

RUN = {
    "name": Name(None, "results go to results/NAME by default (default: the file's name)"),
    "kind": Choice(None, "which experiment", choices=KINDS),
    "seed": Int(0, "seeds Python's, NumPy's and the kind's random numbers", min=0, max=2**31 - 1),
    "dtype": Choice("float32", "the model's dtype", choices=("float32", "bfloat16")),
    "description": Str(""),
    "checkpoint": ExistingPath(None, "default checkpoint (--checkpoint wins; none: the demo)", directory=True),
}
EVAL = {
    "path": ExistingPath(None, "JSONL of {\"text\": ...} lines (default: the built-in eval set)"),
    "max_examples": Int(16, min=1),
    "max_tokens": Int(64, min=2),
    "batch_size": Int(4, min=1),
    "decode_tokens": Int(8, "greedy decode steps timed per variant (0: skip)", min=0),
}
CALIBRATION = {
    "path": ExistingPath(None, "JSONL of {\"text\": ...} lines (default: the built-in calibration set)"),
    "max_examples": Int(8, min=1),
    "max_tokens": Int(64, min=2),
}
SHARED_TABLES = {"eval": EVAL, "calibration": CALIBRATION}


class ExperimentFileError(InputFileError):
    """A missing or malformed experiment file (one line naming the file, the table and the key)."""


def kind_module(kind: str):
    if kind not in KINDS:
        raise ExperimentFileError(f"unknown experiment kind {kind!r}; choose from {', '.join(KINDS)}")
    return importlib.import_module(f"omni_jax.experiments.kinds.{kind}")


def kind_tables(kind: str) -> dict[str, dict[str, Field]]:
    """{table: schema} of the tables a kind reads: the shared ones it uses, then its own."""
    module = kind_module(kind)
    return {**{t: SHARED_TABLES[t] for t in module.TABLES}, kind: module.SCHEMA}


def shipped_experiments() -> list[Path]:
    return sorted(SHIPPED_DIR.glob("*.toml"))


def find_experiment(name_or_path: str | Path) -> Path:
    """A path (with or without ``.toml``), else ``experiments/NAME`` here, else the shipped file NAME."""
    p = Path(name_or_path)
    candidates = [p, p.with_suffix(".toml"), Path("experiments") / p.name,
                  (Path("experiments") / p.name).with_suffix(".toml"), SHIPPED_DIR / p.name,
                  (SHIPPED_DIR / p.name).with_suffix(".toml")]
    for cand in candidates:
        if cand.is_file():
            return cand
    names = ", ".join(s.stem for s in shipped_experiments())
    raise ExperimentFileError(f"{name_or_path}: no such experiment file (looked for {p} and {p}.toml; "
                              f"shipped: {names})")


def _did_you_mean(word: str, known, table: bool = False) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean [{close[0]}]?)" if table else f" (did you mean {close[0]!r}?)"


def _check_table(path: Path, table: str, raw: dict, schema: dict[str, Field]) -> dict:
    out = defaults(schema)
    for key, value in raw.items():
        if key not in schema:
            raise ExperimentFileError(f"{path}: unknown key {key!r} in [{table}]{_did_you_mean(key, schema)}")
        if isinstance(value, dict):
            raise ExperimentFileError(f"{path}: [{table}] {key} is a table; expected a value")
        try:
            out[key] = schema[key].check(value)
        except Problem as e:
            raise ExperimentFileError(f"{path}: [{table}] {key} = {toml_repr(value)}: {e}") from None
    return out


def check_spec(raw: dict, path: Path) -> dict:
    """The resolved spec of a parsed experiment file, or ExperimentFileError naming the first problem."""
    if "kind" not in raw:
        raise ExperimentFileError(f"{path}: missing the 'kind' key (one of {', '.join(KINDS)})")
    kind = raw["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise ExperimentFileError(f"{path}: unknown experiment kind {kind!r}; choose from {', '.join(KINDS)}")
    tables = kind_tables(kind)
    top = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    for key, value in raw.items():
        if isinstance(value, dict) and key not in tables:
            if key in RUN:
                raise ExperimentFileError(f"{path}: [{RUN_TABLE}] {key} is a table; expected a value")
            if key in SHARED_TABLES or key in KINDS:
                used = ", ".join(f"[{t}]" for t in tables)
                raise ExperimentFileError(f"{path}: table [{key}] is not used by {kind!r} experiments "
                                          f"(they read {used})")
            raise ExperimentFileError(f"{path}: unknown table [{key}]{_did_you_mean(key, tables, table=True)}")
    spec = _check_table(path, RUN_TABLE, top, RUN)
    if spec["name"] is None:
        spec["name"] = path.stem
    for table, schema in tables.items():
        spec[table] = _check_table(path, table, raw.get(table, {}), schema)
    return spec


def apply_overrides(spec: dict, overrides: dict | None) -> dict:
    """Command-line values (``--seed``, ``--dtype``) for run keys, checked as the generate CLI checks them."""
    from omni_jax import validation

    for key, value in (overrides or {}).items():
        if key == "seed":
            spec[key] = validation.check_int("seed", value, 0, validation.MAX_SEED)
        elif key == "dtype":
            spec[key] = validation.check_choice("dtype", value, validation.DTYPES)
        else:
            raise UsageError(f"{key}: not a setting the command line can override")
    return spec


def load_spec(path: str | Path, overrides: dict | None = None) -> dict:
    path = find_experiment(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ExperimentFileError(f"{path}: cannot read ({type(e).__name__}: {e})".splitlines()[0]) from None
    except tomllib.TOMLDecodeError as e:
        raise ExperimentFileError(f"{path}: not valid TOML ({e})".splitlines()[0]) from None
    spec = apply_overrides(check_spec(raw, path), overrides)
    spec["file"] = str(path)
    return spec
