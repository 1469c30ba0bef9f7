"""XLA compilation: the persistent compilation cache (on by default) and a log of the programs a run compiles.

Compilation is most of a cold call's time on small models, and researchers re-run commands and notebook cells:
JAX's persistent cache keeps every compiled program on disk, so a second identical process loads them
instead of compiling. ``setup_compilation_cache`` is called by ``omni_jax.load``, the CLI, the experiment
runner and the benchmarks. Where the cache lives:

- ``OMNI_JAX_COMPILATION_CACHE=DIR`` (or the CLI's ``--compilation-cache DIR``): that directory;
  ``off`` (also ``0``, ``none``, ``false``): no persistent cache;
- otherwise ``$XDG_CACHE_HOME/omni_jax/jax_compilation`` (``~/.cache/omni_jax/jax_compilation``).

Every program is cached, however quick its compilation (the minimum compile time is lowered to 0): a call
compiles a few dozen small programs besides the big ones. The cache is trusted code: keep it private.

``CompileLog`` records what JAX compiles while it is active (program name, seconds, whether the persistent
cache served it), from JAX's own compilation events.
"""

from __future__ import annotations

import collections
import contextvars
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

ENV = "OMNI_JAX_COMPILATION_CACHE"
OFF = ("off", "0", "none", "false", "no")
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "omni_jax" / "jax_compilation"


def resolve_cache_dir(setting: str | os.PathLike | None = None) -> Path | None:
    """The cache directory for ``setting`` (a path, ``"off"``, or None: the environment, else the default)."""
    if setting is None:
        setting = os.environ.get(ENV) or None
    if setting is None:
        return default_cache_dir()
    if str(setting).strip().lower() in OFF:
        return None
    return Path(setting).expanduser()


_configured: list = []  # the directory (or None) set up last, once set up


def setup_compilation_cache(setting: str | os.PathLike | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at ``setting`` (see the module docstring); returns the directory,
    or None when it is off. Without an explicit ``setting``, a cache already set up in this process is kept."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    if setting is None and _configured:
        return _configured[-1]
    directory = resolve_cache_dir(setting)
    if _configured and _configured[-1] == directory:
        return directory
    if directory is not None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            directory = None  # an unwritable cache location must not stop generation
    _install()  # count the cache's hits from its first one (omni_jax.executables saves nothing after one)
    with _lock:
        _process_hits[0] = 0  # hits of the cache this process used before do not count for the new one
    jax.config.update("jax_compilation_cache_dir", None if directory is None else str(directory))
    jax.config.update("jax_enable_compilation_cache", directory is not None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    cc.reset_cache()  # the cache is initialised once per process: start over with the new setting
    _configured.append(directory)
    return directory


EFFORT_ENV = "OMNI_JAX_COMPILE_EFFORT"
EFFORTS = ("auto", "fast", "full")
FAST_BELOW_BYTES = 256 * 2**20
# XLA's lowest backend optimization level and its older loop emitters: the image + speech CLI call on the tiny
# test checkpoint compiled its 8 programs in 3.3 s instead of 12-13 s (same tokens and codec codes)
FAST_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
_effort: contextvars.ContextVar[str] = contextvars.ContextVar("omni_jax_compile_effort", default="full")


def effort_for(param_bytes: int, setting: str | None = None) -> str:
    """``fast`` or ``full`` for a model of ``param_bytes`` (``setting``, else ``$OMNI_JAX_COMPILE_EFFORT``,
    else ``auto``: fast below 256 MiB of parameters). A small model's programs run in milliseconds whatever
    the optimization level, and compiling them at full effort is most of a call's time; at real widths the
    optimized code is several times faster (a Thinker layer's decode step at level 0 took 4x as long)."""
    setting = (setting or os.environ.get(EFFORT_ENV) or "auto").strip().lower()
    if setting not in EFFORTS:
        from omni_jax.errors import UsageError

        raise UsageError(f"{EFFORT_ENV}={setting!r}: expected one of {', '.join(EFFORTS)}")
    if setting == "auto":
        return "fast" if param_bytes < FAST_BELOW_BYTES else "full"
    return setting


def compile_effort(effort: str):
    """Context manager: the generation programs (``omni_jax.executables``) compiled within it use ``effort``."""
    import contextlib

    @contextlib.contextmanager
    def scope():
        token = _effort.set(effort)
        try:
            yield
        finally:
            _effort.reset(token)

    return scope()


def compiler_options() -> dict | None:
    """The XLA options of the current compile effort (None: XLA's defaults)."""
    return dict(FAST_OPTIONS) if _effort.get() == "fast" else None


def current_cache_dir() -> Path | None:
    """The directory set up last in this process (None: off, or never set up)."""
    return _configured[-1] if _configured else None


@dataclass
class ProgramStats:
    compiled: int = 0  # compilations XLA ran
    compile_s: float = 0.0
    loaded: int = 0  # programs the persistent cache served
    load_s: float = 0.0


@dataclass
class CompileLog:
    """Programs compiled while active (``with CompileLog() as log: ...``), keyed by JAX's name for them."""

    programs: dict[str, ProgramStats] = field(default_factory=lambda: collections.defaultdict(ProgramStats))

    def __enter__(self) -> "CompileLog":
        _install()
        with _lock:
            _active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        with _lock:
            _active.remove(self)

    def _record(self, name: str, seconds: float, from_cache: bool) -> None:
        p = self.programs[name]
        if from_cache:
            p.loaded += 1
            p.load_s += seconds
        else:
            p.compiled += 1
            p.compile_s += seconds

    @property
    def compiled(self) -> int:
        return sum(p.compiled for p in self.programs.values())

    @property
    def compile_s(self) -> float:
        return sum(p.compile_s for p in self.programs.values())

    @property
    def loaded(self) -> int:
        return sum(p.loaded for p in self.programs.values())

    @property
    def load_s(self) -> float:
        return sum(p.load_s for p in self.programs.values())

    def table(self) -> str:
        """One line per program, slowest first: name, compilations and seconds, cache loads and seconds."""
        rows = sorted(self.programs.items(), key=lambda kv: -(kv[1].compile_s + kv[1].load_s))
        lines = [f"{'program':<34} {'compiled':>8} {'compile s':>10} {'cached':>7} {'load s':>8}"]
        for name, p in rows:
            lines.append(f"{name[:34]:<34} {p.compiled:>8} {p.compile_s:>10.3f} {p.loaded:>7} {p.load_s:>8.3f}")
        lines.append(f"{'total: ' + str(len(rows)) + ' programs':<34} {self.compiled:>8} {self.compile_s:>10.3f} "
                     f"{self.loaded:>7} {self.load_s:>8.3f}")
        return "\n".join(lines)


_lock = threading.Lock()
_active: list[CompileLog] = []
_pending_hit = threading.local()  # a cache hit is announced just before the compile event of the same program
_installed: list[bool] = []


_thread_hits = threading.local()  # persistent-cache hits on each thread
_process_hits = [0]  # persistent-cache hits in this process, on any thread


def cache_hits_on_this_thread() -> int:
    """Programs JAX's persistent cache has served on the calling thread so far (counted from the first call)."""
    _install()
    return getattr(_thread_hits, "count", 0)


def cache_hits_in_process() -> int:
    """Programs JAX's persistent cache has served in this process, on any thread, since it was last set up with
    ``setup_compilation_cache``."""
    _install()
    return _process_hits[0]


def reset_cache_hit_count() -> None:
    """Start ``cache_hits_in_process`` over, as a new process would (tests that simulate one)."""
    with _lock:
        _process_hits[0] = 0


def _on_event(event: str, **kwargs) -> None:
    if event == _CACHE_HIT:
        _pending_hit.value = True
        _thread_hits.count = getattr(_thread_hits, "count", 0) + 1
        with _lock:
            _process_hits[0] += 1


def _on_duration(event: str, seconds: float, **kwargs) -> None:
    if event != _BACKEND_COMPILE:
        return
    from_cache = getattr(_pending_hit, "value", False)
    _pending_hit.value = False
    with _lock:
        for log in _active:
            log._record(str(kwargs.get("fun_name", "?")), seconds, from_cache)


def record_load(name: str, seconds: float) -> None:
    """Record, in every active log, a program served from disk without JAX's compile step
    (``omni_jax.executables``)."""
    with _lock:
        for log in _active:
            log._record(name, seconds, True)


def _install() -> None:
    import jax.monitoring

    with _lock:
        if _installed:
            return
        jax.monitoring.register_event_listener(_on_event)
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        _installed.append(True)
