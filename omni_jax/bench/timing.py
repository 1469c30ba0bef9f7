"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import json
import statistics
import time
from typing import Callable

import jax


def block(x):
    return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def time_fn(fn: Callable[[], object], warmup: int = 1, repeat: int = 5) -> dict:
    """Median / min wall seconds of ``fn()`` (JAX results are blocked on; torch runs synchronously on CPU)."""
    for _ in range(warmup):
        block(fn())
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs_s": times}


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(h)), *(len(_fmt(r[i])) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(_fmt(v).ljust(w) for v, w in zip(r, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def emit_json(obj: dict) -> None:
    print(json.dumps(obj, sort_keys=True))
