"""Compile ahead: a call's later programs are compiled on a background thread while its first ones compile and run.

A text + speech call runs its programs one after another (encoders, Thinker prefill, Thinker decode step, talker
prompt, Talker prefill, Talker frame step, Code2Wav window), and every one of them is known, shapes included,
before the first runs. XLA compiles one program on one core; so while the main thread compiles and runs the
encoders and the prefill, a background thread compiles the later programs from their abstract arguments
(``jitted.lower(...).compile()``: JAX keeps the trace, the lowering and the executable in the jitted function's
own caches, so the real call later compiles nothing). Before calling a program that was scheduled, the engines
``wait_for`` it, so a program is never compiled twice at the same time.

A job that fails is dropped silently: its program is compiled by the real call, which reports any real error.
A job runs under the mesh that was JAX's context mesh when it was scheduled (the context is per thread), and in
a copy of the scheduling thread's context variables (the compile effort), so it compiles the program the real
call will run.
"""

from __future__ import annotations

import contextvars
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import jax

_lock = threading.Lock()
_pending: dict[str, Future] = {}
_executor: list[ThreadPoolExecutor] = []


def _under_mesh(job: Callable[[], object], mesh) -> Callable[[], object]:
    if mesh.empty:
        return job

    def run():
        with jax.set_mesh(mesh):
            return job()

    return run


def compile_ahead(jobs: list[tuple[str, Callable[[], object]]]) -> None:
    """Run ``jobs`` ((program name, compile function)) in order on the background compile thread, each in a copy
    of the caller's context (its compile effort)."""
    mesh = jax.sharding.get_mesh()
    with _lock:
        if not _executor:
            _executor.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="omni_jax-compile-ahead"))
        for name, job in jobs:
            _pending[name] = _executor[0].submit(contextvars.copy_context().run, _under_mesh(job, mesh))


def wait_for(name: str) -> None:
    """Block until the scheduled compilation of ``name`` (if any) has finished."""
    with _lock:
        future = _pending.pop(name, None)
    if future is not None:
        try:
            future.result()
        except Exception:  # noqa: BLE001  the real call compiles it and reports any real error
            pass


def discard() -> None:
    """Drop the jobs that have not started (a call that ended without needing them: an early EOS, no speech)."""
    with _lock:
        futures = list(_pending.values())
        _pending.clear()
    for future in futures:
        future.cancel()


def committed(tree):
    """``tree`` with every ShapeDtypeStruct that has no sharding placed on the default device, as a jitted call's
    outputs are. A jitted function takes its input shardings from its committed arguments, so an abstract
    argument without one lowers (and compiles) a different program from the real call's."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def place(x):
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device, weak_type=x.weak_type)
        return x

    return jax.tree.map(place, tree)
