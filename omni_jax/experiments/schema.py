"""Typed keys of experiment files: each key's type, default and allowed range, checked before any work.

A table of an experiment file is described by a dict {key: Field}; ``Field.check(value)`` returns the value
as the runner uses it (an int given for a float becomes a float) or raises ``Problem`` with what is wrong
("expected an integer", "must be >= 1"). ``spec.py`` turns a problem into one line naming the file, the
table and the key.

    SCHEMA = {"steps": Int(40, min=1), "lr": Float(1e-3, min=0, min_open=True),
              "modes": ListOf(Choice("off_policy", ("off_policy", "on_policy")), ["off_policy"], min_len=1)}
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Problem(Exception):
    """What is wrong with one value (the message fragment after ``key = value:``)."""


def toml_repr(value: Any) -> str:
    """A value as it would be written in a TOML file (for messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_repr(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_repr(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _bound(v, lo, hi, lo_open=False):
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise Problem(f"must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and v > hi:
        raise Problem(f"must be <= {hi}")


@dataclass(frozen=True)
class Field:
    default: Any
    doc: str = ""

    def check(self, value):  # pragma: no cover - every field overrides it
        raise Problem("unsupported field")

    def default_value(self):
        return copy.deepcopy(self.default)


@dataclass(frozen=True)
class Int(Field):
    min: int | None = None
    max: int | None = None
    choices: tuple[int, ...] = ()

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise Problem("expected an integer")
        if self.choices and value not in self.choices:
            raise Problem(f"choose from {', '.join(map(str, self.choices))}")
        _bound(value, self.min, self.max)
        return value


@dataclass(frozen=True)
class Float(Field):
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # the minimum itself is not allowed

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Problem("expected a number")
        value = float(value)
        if not math.isfinite(value):
            raise Problem("must be a finite number")
        _bound(value, self.min, self.max, self.min_open)
        return value


@dataclass(frozen=True)
class Bool(Field):
    def check(self, value):
        if not isinstance(value, bool):
            raise Problem("expected true or false")
        return value


@dataclass(frozen=True)
class Str(Field):
    nonempty: bool = False

    def check(self, value):
        if not isinstance(value, str):
            raise Problem("expected a string")
        if self.nonempty and not value.strip():
            raise Problem("must not be empty")
        return value


@dataclass(frozen=True)
class Choice(Field):
    choices: tuple = ()

    def check(self, value):
        if not isinstance(value, str):
            raise Problem(f"expected a string, one of {', '.join(map(toml_repr, self.choices))}")
        if value not in self.choices:
            raise Problem(f"choose from {', '.join(map(toml_repr, self.choices))}")
        return value


@dataclass(frozen=True)
class Name(Field):
    """A name usable as a folder name: no path separators, not starting with a dot."""

    def check(self, value):
        if not isinstance(value, str):
            raise Problem("expected a string")
        if not value.strip() or value.startswith(".") or any(c in value for c in "/\\\0"):
            raise Problem("must be a non-empty name without '/', '\\' or a leading '.'")
        return value


@dataclass(frozen=True)
class ExistingPath(Field):
    """A path to an existing file (or directory, ``directory=True``); ``None`` allowed when it is the default."""

    directory: bool = False

    def check(self, value):
        if value is None and self.default is None:
            return None
        if not isinstance(value, str) or not value:
            raise Problem(f"expected a path to a {'directory' if self.directory else 'file'}")
        p = Path(value).expanduser()
        if self.directory and not p.is_dir():
            raise Problem("no such directory")
        if not self.directory:
            if not p.is_file():
                raise Problem("no such file")
            try:
                with open(p, "rb"):
                    pass
            except OSError as e:
                raise Problem(f"cannot read it ({e.strerror or e})") from None
        return str(p)


@dataclass(frozen=True)
class ListOf(Field):
    item: Field | None = None
    min_len: int = 0

    def check(self, value):
        if not isinstance(value, list):
            raise Problem(f"expected a list of {self.describe()}")
        if len(value) < self.min_len:
            raise Problem(f"needs at least {self.min_len} item{'s' if self.min_len > 1 else ''}")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(self.item.check(v))
            except Problem as e:
                raise Problem(f"item {i + 1} ({toml_repr(v)}): {e}") from None
        return out

    def describe(self) -> str:
        return {Int: "integers", Float: "numbers", Bool: "booleans", Choice: "strings", Str: "strings",
                ExistingPath: "file paths", Either: "numbers"}.get(type(self.item), "values")


@dataclass(frozen=True)
class Either(Field):
    """The first of ``fields`` whose type fits the value decides (e.g. an expert count or a fraction)."""

    fields: tuple = ()
    what: str = ""

    def check(self, value):
        last = None
        for f in self.fields:
            try:
                return f.check(value)
            except Problem as e:
                if str(e).startswith("expected"):
                    continue  # not this type: try the next
                last = e
                break
        raise last if last is not None else Problem(f"expected {self.what}")


def defaults(schema: dict[str, Field]) -> dict:
    return {k: f.default_value() for k, f in schema.items()}
