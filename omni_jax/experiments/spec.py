"""Experiment files: one small TOML file per experiment, merged over defaults into the resolved config.

    name = "topk_sweep"
    kind = "routing"            # a module omni_jax/experiments/kinds/<kind>.py
    seed = 0
    description = "..."
    [eval]                      # optional: the defaults below
    [<kind>]                    # the kind's knobs
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

from omni_jax.errors import InputFileError

DEFAULTS = {
    "seed": 0,
    "dtype": "float32",
    "description": "",
    "checkpoint": None,  # None: --checkpoint, else the random-weight demo checkpoint
    "eval": {"path": None, "max_examples": 16, "max_tokens": 64, "batch_size": 4, "decode_tokens": 8},
    "calibration": {"path": None, "max_examples": 8, "max_tokens": 64},
}


class ExperimentFileError(InputFileError):
    """A missing or malformed experiment file."""


def find_experiment(name_or_path: str | Path) -> Path:
    """``experiments/NAME``, ``experiments/NAME.toml`` or a path."""
    p = Path(name_or_path)
    for cand in (p, p.with_suffix(".toml"), Path("experiments") / p.name, (Path("experiments") / p.name).with_suffix(".toml")):
        if cand.is_file():
            return cand
    raise ExperimentFileError(f"{name_or_path}: no such experiment file (looked for {p} and {p}.toml)")


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_spec(path: str | Path, overrides: dict | None = None) -> dict:
    path = find_experiment(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ExperimentFileError(f"{path}: cannot read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ExperimentFileError(f"{path}: not valid TOML ({e})") from None
    for key in ("kind",):
        if key not in raw:
            raise ExperimentFileError(f"{path}: missing the {key!r} key")
    raw.setdefault("name", path.stem)
    spec = merge(DEFAULTS, raw)
    if overrides:
        spec = merge(spec, overrides)
    spec["file"] = str(path)
    return spec
