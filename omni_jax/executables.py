"""Compiled programs kept on disk and loaded without tracing or lowering them again.

JAX's persistent compilation cache (``omni_jax.compilation``) saves XLA's compile step only: every new process
still traces each program and lowers it to StableHLO to find its cache key, which was a third of a warm
tiny-model CLI call (about 1.3 s of 4 s). ``program`` wraps ``jax.jit`` for the generation programs that run
once per call or once per step (the prefills, the decode and frame steps, the encoders, Code2Wav's window).
The first call with a new signature looks for the serialized executable under the compilation cache
(``executables/`` beside JAX's entries) and loads it; later calls with that signature run it.

Two entries per program:
- by its arguments: the program's name, this package's sources (a fingerprint of every ``.py`` file), the
  runtime (jax and jaxlib versions, backend and devices, ``XLA_FLAGS``, the JAX settings that change tracing,
  the CPU), the static arguments and every array argument's shape, dtype, weak type and sharding. Found
  without tracing anything.
- by its StableHLO and the runtime (``hlo-*.xla``, the same file): when the first is missing (a first call, or
  an edit elsewhere in the package), the program is traced and lowered, and found here if its HLO is
  unchanged; otherwise XLA compiles it and both entries are written.

Static arguments must be plain values (numbers, strings, dtypes, enums, frozen dataclasses and tuples of
them); anything else, such as a callable, sends the call down the ordinary ``jax.jit`` path, as do calls
inside a trace (a program used within another jitted function), calls with the compilation cache off, and
multi-process runs. An entry that cannot be read is removed and compiled again. Only executables XLA compiled
in a process that JAX's own cache has served nothing to are saved: one that cache served serializes without its
compiled functions, and so can one compiled after it in the same process.

Loading an executable runs code from the cache directory: keep it private (as JAX's own cache).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import inspect
import os
import pickle
import sys
import threading
import time
import weakref
from pathlib import Path

import jax
import numpy as np

from omni_jax import compilation, kernels

SUBDIR = "executables"
_TRACE_SETTINGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion",
                   "jax_numpy_dtype_promotion", "jax_default_prng_impl", "jax_threefry_partitionable")


class _Unkeyable(Exception):
    """An argument whose value cannot be part of a key that is stable across processes."""


def static_key(x) -> str:
    """A text that determines ``x`` (a static argument) across processes, or _Unkeyable."""
    if x is None or isinstance(x, (bool, int, float, str, bytes)):
        return repr(x)
    if isinstance(x, enum.Enum):
        return f"{type(x).__module__}.{type(x).__qualname__}.{x.name}"
    if isinstance(x, (tuple, list)):
        return f"{type(x).__qualname__}(" + ",".join(static_key(v) for v in x) + ")"
    if isinstance(x, (set, frozenset)):
        return "frozenset(" + ",".join(sorted(static_key(v) for v in x)) + ")"
    if isinstance(x, dict):
        return "{" + ",".join(sorted(f"{static_key(k)}:{static_key(v)}" for k, v in x.items())) + "}"
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        fields = ",".join(f"{f.name}={static_key(getattr(x, f.name))}" for f in dataclasses.fields(x))
        return f"{type(x).__module__}.{type(x).__qualname__}({fields})"
    if isinstance(x, np.dtype):
        return f"dtype:{x}"
    if isinstance(x, type) or type(x).__name__ == "_ScalarMeta":  # np.float32, jnp.float32
        try:
            return f"dtype:{np.dtype(x)}"
        except TypeError:
            pass
    raise _Unkeyable(type(x).__qualname__)


_sharding_texts: dict = {}


def _sharding_key(s) -> str:
    if s is None:
        return "default"  # host values and abstract ones without a sharding: placed as jit places them
    text = _sharding_texts.get(s)
    if text is None:
        if isinstance(s, jax.sharding.SingleDeviceSharding):
            (device,) = s.device_set
            text = f"single:{device.platform}:{device.id}"
        elif isinstance(s, jax.sharding.NamedSharding):
            text = f"named:{_mesh_key(s.mesh)}:{s.spec}"
        else:
            raise _Unkeyable(type(s).__qualname__)
        _sharding_texts[s] = text
    return text


def _mesh_key(mesh) -> str:
    return (f"{tuple(mesh.axis_names)}:{tuple(mesh.devices.shape)}:{[d.id for d in mesh.devices.flat]}:"
            f"{tuple(str(t) for t in getattr(mesh, 'axis_types', ()))}")


_array_keys: dict[int, tuple] = {}  # id(array) -> (weak reference, key): an array's key is read once


def _forget(i: int):
    return lambda _: _array_keys.pop(i, None)


def _leaf_key(x) -> tuple:
    if isinstance(x, jax.core.Tracer):
        raise _Unkeyable("traced")
    if isinstance(x, jax.Array):
        entry = _array_keys.get(id(x))
        if entry is not None and entry[0]() is x:
            return entry[1]
        key = x.shape, x.dtype, getattr(x, "weak_type", False), _sharding_key(x.sharding)  # PRNG keys: no weak_type
        try:
            _array_keys[id(x)] = (weakref.ref(x, _forget(id(x))), key)
        except TypeError:
            pass
        return key
    if isinstance(x, jax.ShapeDtypeStruct):
        return x.shape, x.dtype, getattr(x, "weak_type", False), _sharding_key(x.sharding)
    if isinstance(x, (np.ndarray, np.generic)):
        return x.shape, x.dtype, False, "default"
    if isinstance(x, (bool, int, float, complex)):
        return "python", type(x).__name__
    raise _Unkeyable(type(x).__qualname__)


@functools.lru_cache(maxsize=1)
def runtime_fingerprint() -> str:
    """What an executable depends on besides its program: the JAX build, the backend and its devices, XLA's
    flags, JAX's tracing settings, the CPU and the CPU kernels (built and registered here first: a loaded
    executable may call them)."""
    import jaxlib

    h = hashlib.sha256()
    devices = jax.devices()
    h.update(repr((jax.__version__, jaxlib.__version__, sys.version, devices[0].platform,
                   devices[0].device_kind, len(devices), os.environ.get("XLA_FLAGS", ""),
                   [(name, str(getattr(jax.config, name, None))) for name in _TRACE_SETTINGS],
                   kernels.fingerprint())).encode())
    try:
        h.update(Path("/proc/cpuinfo").read_bytes().split(b"\n\n")[0])  # an executable is built for this CPU
    except OSError:
        pass
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """This package's source files: what a traced program depends on besides its arguments."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.cc")]):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def store_dir() -> Path | None:
    """Where executables are kept, or None (compilation cache off, or several processes)."""
    cache = compilation.current_cache_dir()
    if cache is None or jax.process_count() > 1:
        return None
    return cache / SUBDIR


def _inside_trace() -> bool:
    try:
        jax.sharding.get_mesh()  # refuses inside a trace
    except ValueError:
        return True
    return False


_programs: list = []


def clear() -> None:
    """Forget the executables this process holds (with ``jax.clear_caches()``: as a new process would start)."""
    for p in _programs:
        with p._lock:
            p._ready.clear()
            p._locks.clear()


class Program:
    """``jax.jit(fun, static_argnames=..., donate_argnames=...)`` whose executables are kept on disk (see the
    module docstring). Called like the jitted function; ``lower`` is the jitted function's; ``prepare`` loads or
    compiles without running and returns the output's ShapeDtypeStructs."""

    def __init__(self, fun, static_argnames=(), donate_argnames=()):
        self.jitted = jax.jit(fun, static_argnames=static_argnames, donate_argnames=donate_argnames)
        self._fast_jitted = jax.jit(fun, static_argnames=static_argnames, donate_argnames=donate_argnames,
                                    compiler_options=compilation.FAST_OPTIONS)
        self.name = f"jit({fun.__name__})"
        self.signature = inspect.signature(fun)
        self.static = frozenset(static_argnames)
        self._ready: dict = {}
        self._locks: dict = {}
        self._lock = threading.Lock()
        functools.update_wrapper(self, fun)
        _programs.append(self)

    def current(self):
        """The jitted function of the current compile effort (``omni_jax.compilation.compile_effort``); inside
        another trace the plain one (the outer program is what gets compiled)."""
        if compilation.compiler_options() and not _inside_trace():
            return self._fast_jitted
        return self.jitted

    def lower(self, *args, **kwargs):
        return self.current().lower(*args, **kwargs)

    def cache_size(self) -> int:
        """Executables this process holds for the program (compiled or loaded)."""
        return self.jitted._cache_size() + self._fast_jitted._cache_size() + len(self._ready)

    def _bind(self, args, kwargs):
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    def _key(self, arguments: dict) -> tuple | None:
        directory = store_dir()
        if directory is None:
            return None
        if _inside_trace():  # a program used within another jitted function
            return None
        mesh = jax.sharding.get_mesh()
        statics, dynamic = [] if mesh.empty else [f"mesh={_mesh_key(mesh)}"], {}
        options = compilation.compiler_options()
        if options:
            statics.append(f"compiler_options={sorted(options.items())}")
        try:
            for name, value in arguments.items():
                if name in self.static:
                    statics.append(f"{name}={static_key(value)}")
                else:
                    dynamic[name] = value
            leaves, tree = jax.tree.flatten(dynamic)
            leaf_keys = tuple(_leaf_key(x) for x in leaves)
        except _Unkeyable:
            return None
        return (";".join(statics), tree, leaf_keys), dynamic, directory

    def _obtain(self, key: tuple, arguments: dict, dynamic: dict, directory: Path):
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            compiled = self._ready.get(key)
            if compiled is not None:
                return compiled
            path = self._path(key, directory)
            compiled = self._load(path, dynamic)
            if compiled is None:
                compiled = self._by_program(self.jitted.lower(**arguments), path, dynamic, directory,
                                            compilation.compiler_options() or {})
            self._ready[key] = compiled
            return compiled

    def _by_program(self, lowered, path: Path, dynamic: dict, directory: Path, options: dict):
        """The executable of ``lowered``: the store's entry for the same StableHLO if there is one (the
        arguments' entry was missing: first call, or the package changed but not this program), else compiled
        by XLA. Either way it is saved for ``path`` too."""
        text = lowered.as_text()
        digest = hashlib.sha256((runtime_fingerprint() + repr(sorted(options.items())) + text).encode()).hexdigest()
        by_hlo = directory / f"hlo-{digest}.xla"
        compiled = self._load(by_hlo, dynamic)
        if compiled is not None:
            self._link(by_hlo, path)
            return compiled
        # the inert option keeps these compilations apart from plain jax.jit entries in JAX's own cache
        compiled = lowered.compile(compiler_options={"xla_dump_hlo_module_re": "omni_jax.executables", **options})
        if compilation.cache_hits_in_process() == 0:
            # only what XLA compiled in a process JAX's own cache has served nothing to is saved: an executable
            # that cache served serializes without its compiled functions, and so does one XLA compiled after
            # such a load in the same process (its functions are shared with the loaded one: Code2Wav's window,
            # compiled after the cache served the same program at another width, saved, loaded by the next
            # process and failed there with "Function wrapped_exponential.7 not found")
            if self._save(by_hlo, compiled):
                self._link(by_hlo, path)
        return compiled

    @staticmethod
    def _link(source: Path, path: Path) -> None:
        try:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
            os.link(source, tmp)
            os.replace(tmp, path)
        except OSError:
            pass

    def _path(self, key: tuple, directory: Path) -> Path:
        statics, tree, leaf_keys = key
        text = repr((self.name, runtime_fingerprint(), source_fingerprint(), statics, str(tree),
                     [(k[0], str(k[1]), *k[2:]) for k in leaf_keys]))
        return directory / (hashlib.sha256(text.encode()).hexdigest() + ".xla")

    def _load(self, path: Path, dynamic: dict):
        from jax.experimental.serialize_executable import deserialize_and_load

        if not path.exists():
            return None
        t0 = time.perf_counter()
        try:
            payload, out_tree = pickle.loads(path.read_bytes())
            compiled = deserialize_and_load(payload, jax.tree.structure(((), dynamic)), out_tree)
        except Exception:  # noqa: BLE001  an unreadable or stale entry is removed, compiled again and replaced
            path.unlink(missing_ok=True)
            return None
        compilation.record_load(self.name, time.perf_counter() - t0)
        return compiled

    def _save(self, path: Path, compiled) -> bool:
        from jax.experimental.serialize_executable import serialize

        from omni_jax.atomic import atomic_write_bytes

        try:
            payload, _, out_tree = serialize(compiled)
            data = pickle.dumps((payload, out_tree))
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        except Exception:  # noqa: BLE001  a program that cannot be serialized is compiled in each process
            return False
        return True

    def prepare(self, *args, **kwargs):
        """Load or compile the program for these arguments (arrays or ShapeDtypeStructs) without running it;
        returns its outputs' ShapeDtypeStructs."""
        arguments = self._bind(args, kwargs)
        found = self._key(arguments)
        if found is None:
            return self.current().lower(*args, **kwargs).compile().out_info
        key, dynamic, directory = found
        return self._obtain(key, arguments, dynamic, directory).out_info

    def out_shapes(self, *args, **kwargs):
        """The outputs' ShapeDtypeStructs for these arguments: from the executable when this process holds it
        or the disk has it, else by tracing (``jax.eval_shape``), which compiles nothing."""
        arguments = self._bind(args, kwargs)
        found = self._key(arguments)
        if found is not None:
            key, dynamic, directory = found
            if key in self._ready or self._path(key, directory).exists():
                return self._obtain(key, arguments, dynamic, directory).out_info
        return self.current().trace(*args, **kwargs).out_info  # the trace the real call will reuse

    def __call__(self, *args, **kwargs):
        arguments = self._bind(args, kwargs)
        found = self._key(arguments)
        if found is None:
            return self.current()(*args, **kwargs)
        key, dynamic, directory = found
        compiled = self._ready.get(key)
        if compiled is None:
            compiled = self._obtain(key, arguments, dynamic, directory)
        return compiled(**dynamic)


def program(fun=None, *, static_argnames=(), donate_argnames=()):
    """Decorator: ``@program(static_argnames=(...), donate_argnames=(...))`` (see ``Program``)."""
    if fun is None:
        return functools.partial(program, static_argnames=static_argnames, donate_argnames=donate_argnames)
    return Program(fun, static_argnames=tuple(static_argnames), donate_argnames=tuple(donate_argnames))
