"""Routing settings as users write them (a flag, a TOML file, a dict) -> one ``RoutingConfig`` per decoder layer.

Keys are ``RoutingConfig``'s hooks: ``top_k``, ``top_p``, ``temperature``, ``bias``, ``bias_selection_only``,
``expert_keep_mask``, ``random_seed``, ``capacity_factor``, ``norm_topk_prob``. A value applies to every layer;
a list with one value per layer (for ``bias`` / ``expert_keep_mask``: a list of such lists) gives each layer its
own. Keys left out keep the model's routing.

- flag: ``top_k=4,temperature=0.5`` or ``top_k=[8,8,4,4]`` (values in TOML syntax; ``True``/``False`` also work);
- file: a TOML file with one ``[routing]`` table whose keys are the same hooks prefixed by the stack they
  route, as the experiment files' routing tables name them::

      [routing]
      thinker_top_k = 4
      thinker_temperature = 0.5
      talker_top_k = 4

Every problem is a ``RoutingError`` (a usage error) naming the flag or file and the key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omni_jax.moe.router import RoutingConfig, RoutingError

STACKS = ("thinker", "talker")
# hook -> (kind, is a vector of num_experts values)
KEYS: dict[str, tuple[type, bool]] = {
    "top_k": (int, False), "top_p": (float, False), "temperature": (float, False), "bias": (float, True),
    "bias_selection_only": (bool, False), "expert_keep_mask": (bool, True), "random_seed": (int, False),
    "capacity_factor": (float, False), "norm_topk_prob": (bool, False),
}


def _known() -> str:
    return ", ".join(KEYS)


def _split_top_level(text: str) -> list[str]:
    """Split ``a=1,b=[1,2]`` at the commas outside brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_routing_flag(text: str, flag: str = "--routing") -> dict[str, Any]:
    """``"top_k=4,temperature=0.5"`` -> {"top_k": 4, "temperature": 0.5} (keys checked, values not yet)."""
    out: dict[str, Any] = {}
    for item in _split_top_level(text):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise RoutingError(f"{flag}: expected KEY=VALUE items separated by commas, got {item!r}")
        if key not in KEYS:
            raise RoutingError(f"{flag}: unknown routing key {key!r} (known: {_known()})")
        raw = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", raw.strip()))
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw  # a bare word: reported as a wrong type when the value is checked
    return out


def read_routing_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """{"thinker": {...}, "talker": {...}} from the ``[routing]`` table of a TOML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RoutingError(f"{path}: cannot read the routing file ({getattr(e, 'strerror', None) or e})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RoutingError(f"{path}: not valid TOML ({e})") from None
    extra = sorted(set(raw) - {"routing"})
    if extra or not isinstance(raw.get("routing"), dict):
        what = f"unknown top-level key {extra[0]!r}" if extra else "no [routing] table"
        raise RoutingError(f"{path}: {what} (a routing file has one [routing] table)")
    out: dict[str, dict[str, Any]] = {s: {} for s in STACKS}
    for key, value in raw["routing"].items():
        stack, _, hook = key.partition("_")
        if stack not in STACKS or hook not in KEYS:
            raise RoutingError(f"{path}: unknown routing key {key!r} in [routing] (known: thinker_ or talker_ + "
                               f"one of {_known()})")
        out[stack][hook] = value
    return out


def _check_value(key: str, value, source: str):
    kind, vector = KEYS[key]

    def scalar(v):
        if kind is bool:
            if not isinstance(v, bool):
                raise RoutingError(f"{source}: {key} must be true or false, got {v!r}")
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
            raise RoutingError(f"{source}: {key} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
        return kind(v)

    if vector:
        if not isinstance(value, (list, tuple)) or not value:
            raise RoutingError(f"{source}: {key} must be a list (one value per expert), got {value!r}")
        return tuple(scalar(v) for v in value)
    return scalar(value)


def _per_layer(key: str, value, n_layers: int, source: str) -> list:
    """The value of ``key`` for each layer: a per-layer list, or the one value repeated."""
    _, vector = KEYS[key]
    per_layer = isinstance(value, (list, tuple)) and (not vector or (value and isinstance(value[0], (list, tuple))))
    if not per_layer:
        return [_check_value(key, value, source)] * n_layers
    if len(value) != n_layers:
        raise RoutingError(f"{source}: {key} has {len(value)} values; a per-layer list needs one per layer "
                           f"({n_layers} layers)")
    return [_check_value(key, v, source) for v in value]


def routing_from_settings(settings: Mapping[str, Any], text_cfg, source: str) -> tuple[RoutingConfig, ...]:
    """One RoutingConfig per layer of ``text_cfg`` from hook settings (see the module docstring)."""
    unknown = sorted(set(settings) - set(KEYS))
    if unknown:
        raise RoutingError(f"{source}: unknown routing key {unknown[0]!r} (known: {_known()})")
    n = text_cfg.num_layers
    columns = {k: _per_layer(k, v, n, source) for k, v in settings.items()}
    return tuple(_on_model(lambda i=i: RoutingConfig(**{k: col[i] for k, col in columns.items()}), text_cfg, source)
                 for i in range(n))


def _on_model(make, text_cfg, source: str) -> RoutingConfig:
    """``make()`` completed with the model's values; a config that cannot work names ``source``."""
    try:
        return make().for_model(text_cfg)
    except RoutingError as e:
        raise RoutingError(f"{source}: {e}") from None


def resolve_routing(routing, text_cfg, source: str = "routing") -> tuple[RoutingConfig, ...] | None:
    """The API's ``routing=`` argument -> one complete RoutingConfig per layer, or None (the model's routing).

    routing: None, a RoutingConfig (every layer; fields left None take the model's values), a sequence of them
    (one per layer), or a mapping of hook settings (see the module docstring)."""
    if routing is None:
        return None
    if isinstance(routing, Mapping):
        return routing_from_settings(routing, text_cfg, source)
    if isinstance(routing, RoutingConfig):
        routing = [routing] * text_cfg.num_layers
    if not isinstance(routing, Sequence) or not all(isinstance(r, RoutingConfig) for r in routing):
        raise RoutingError(f"{source}: expected a RoutingConfig, one per layer, or a dict of routing settings; "
                           f"got {type(routing).__name__}")
    if len(routing) != text_cfg.num_layers:
        raise RoutingError(f"{source}: {len(routing)} routing configs; a per-layer list needs one per layer "
                           f"({text_cfg.num_layers} layers)")
    return tuple(_on_model(lambda r=r: r, text_cfg, source) for r in routing)
