"""Compile the package's C++ CPU kernels once per machine, load them and register them with XLA's FFI."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import jax

from omni_jax.paths import cache_root

SOURCE_DIR = Path(__file__).resolve().parent / "cpu"
# the FFI handlers the library exports, registered under the same names
TARGETS = ("OmniMoeExperts", "OmniMatmul", "OmniMatmulShared", "OmniDecodeAttention")
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=c++17", "-w")
ENV_SWITCH = "OMNI_JAX_CPU_KERNELS"

_lock = threading.Lock()


def kernels_enabled() -> bool:
    """False when ``OMNI_JAX_CPU_KERNELS`` is 0 / false / off (the pure-XLA paths are used)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _library_key(compiler: str) -> str:
    import jaxlib

    h = hashlib.sha256()
    for path in sorted([*SOURCE_DIR.glob("*.cc"), *SOURCE_DIR.glob("*.h")]):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    h.update(repr((version, FLAGS, jaxlib.__version__, sys.platform)).encode())
    try:
        h.update(Path("/proc/cpuinfo").read_bytes().split(b"\n\n")[0])  # -march=native: built for this CPU
    except OSError:
        pass
    return h.hexdigest()[:24]


def _build(compiler: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        target = Path(tmp) / out.name
        cmd = [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", *map(str, sorted(SOURCE_DIR.glob("*.cc"))),
               "-o", str(target)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed")
        os.replace(target, out)  # complete or absent: concurrent builders each rename a whole library


@functools.lru_cache(maxsize=1)
def _load() -> str | None:
    """Build (once per machine) and register the kernels; their library's key, or None when unavailable."""
    compiler = _compiler()
    if compiler is None:
        warnings.warn("omni_jax: no C++ compiler found (set CXX): the CPU kernels are off, XLA paths are used",
                      RuntimeWarning, stacklevel=3)
        return None
    key = _library_key(compiler)
    path = cache_root() / "kernels" / f"omni_jax_cpu_{key}.so"
    try:
        if not path.is_file():
            _build(compiler, path)
        lib = ctypes.cdll.LoadLibrary(str(path))
        for name in TARGETS:
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    except (OSError, RuntimeError, AttributeError) as err:
        warnings.warn(f"omni_jax: the CPU kernels could not be built or loaded ({path}: {err}); XLA paths are used",
                      RuntimeWarning, stacklevel=3)
        return None
    return key


def available() -> bool:
    """Whether the CPU kernels are enabled, built and registered in this process (builds them on first call)."""
    if not kernels_enabled():
        return False
    with _lock:
        return _load() is not None


def usable_here() -> bool:
    """Whether a program traced now may call the kernels: they are available, JAX runs on one CPU device and no
    multi-device mesh is set (sharded programs keep XLA's ops, which the partitioner splits; a kernel's operands
    would be gathered whole onto every device)."""
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
        return False
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        return False
    return available()


def fingerprint() -> str:
    """What a compiled program that may call the kernels depends on: off, or the library's key."""
    if not kernels_enabled():
        return "cpu-kernels:off"
    with _lock:
        return f"cpu-kernels:{_load()}"
