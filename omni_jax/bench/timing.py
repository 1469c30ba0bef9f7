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


def time_interleaved(fns: dict[str, Callable[[], object]], warmup: int = 1, repeat: int = 5,
                     settle: int = 3) -> dict[str, dict]:
    """``time_fn`` for several functions at once, their timed runs interleaved: each round runs every function
    ``settle`` times untimed and then once timed, the order of the functions rotated by one each round.

    A shared host's load drifts over seconds, so timing one side's runs and then the other's puts the drift into
    their ratio; interleaved, each side's median sees the same host. The untimed runs bring each side back to
    the state a series of its own repeats reaches (what ``time_fn`` measures) before its timed run: the other
    side's run evicts its weights from the L3. One-layer decode step at KV 512 (225 MB of weights, 480 MB L3),
    omni_jax / HF's ``grouped_mm``, settle 0: 12.4 / 10.8 ms; 1: 10.2-10.6 / 10.3-10.6 ms; 3: 8.8-9.1 /
    10.2 ms; timed one side after the other: 8.8 / 10.1 ms. Returns ``{name: {median_s, min_s, runs_s}}``."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            block(fns[name]())
    times = {name: [] for name in names}
    for i in range(repeat):
        for name in names[i % len(names):] + names[:i % len(names)]:
            for _ in range(settle):
                block(fns[name]())
            t0 = time.perf_counter()
            block(fns[name]())
            times[name].append(time.perf_counter() - t0)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "runs_s": t} for name, t in times.items()}


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
