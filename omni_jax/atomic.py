"""Outputs that are either complete or absent: files and directories written beside their destination and
renamed into place only when finished.

A temporary lives in the destination's own folder (so the final ``os.replace`` is a rename on one file
system) and is named ``.NAME.tmp-PID-XXXX``: hidden, never mistaken for the output, and traceable to the
process that made it. A process killed outright (SIGKILL, power loss) cannot remove its temporary; the next
writer of the same destination removes the temporaries whose process is gone (``remove_stale_temporaries``).

    with atomic_directory(out_dir) as tmp:      # out_dir must not exist yet
        write_everything_into(tmp)              # on any exception (Ctrl-C included) tmp is removed
    atomic_write_text(path, text)               # an existing file is replaced only by a complete one
    with PartialFile(path) as f: f.write(...)   # streamed to NAME.partial, renamed to NAME when complete

Interruption: ``install_interrupt_handlers()`` (the command-line entry points call it) turns SIGINT and
SIGTERM into KeyboardInterrupt AND records that an interruption was asked for. Python may deliver the
exception where it is swallowed (inside a garbage-collection callback or a ``__del__``); the record makes
every commit here (the final rename) refuse instead, so an interrupted run never publishes an output.
Long loops call ``raise_if_interrupted()`` to stop soon after such a swallowed signal.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from omni_jax.errors import InputFileError

PARTIAL_SUFFIX = ".partial"
_interrupt_requested = threading.Event()


def request_interrupt() -> None:
    """Record that the process is being interrupted: every later commit refuses."""
    _interrupt_requested.set()


def clear_interrupt_request() -> None:
    """Forget a recorded interruption (a process that goes on with other work after handling one)."""
    _interrupt_requested.clear()


def _on_signal(signum, frame):
    request_interrupt()
    raise KeyboardInterrupt


def install_interrupt_handlers() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt and are remembered (see the module docstring)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)


def interrupt_requested() -> bool:
    return _interrupt_requested.is_set()


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if a SIGINT / SIGTERM arrived (even one whose exception was swallowed)."""
    if _interrupt_requested.is_set():
        raise KeyboardInterrupt


def _tmp_prefix(dest: Path) -> str:
    return f".{dest.name}.tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _owner_pid(name: str, prefix: str) -> int | None:
    head = name[len(prefix):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def remove_stale_temporaries(dest: str | Path) -> list[Path]:
    """Remove ``.NAME.tmp-*`` siblings of ``dest`` left by processes that no longer run; returns them."""
    dest = Path(dest)
    parent, prefix = dest.parent, _tmp_prefix(dest)
    if not parent.is_dir():
        return []
    removed = []
    for p in parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        pid = _owner_pid(p.name, prefix)
        if pid is not None and (pid == os.getpid() or _pid_alive(pid)):
            continue  # a live process (maybe this one) is writing this destination right now
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed


def check_output_parent(path: str | Path, what: str, directory: bool = False) -> Path:
    """The folder an output goes into must exist and be writable: one line naming ``what`` otherwise.
    A file output (``directory=False``) must not name an existing directory."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise InputFileError(f"{what} {path}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise InputFileError(f"{what} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputFileError(f"{what} {path}: the folder {parent} is not writable")
    if not directory and path.is_dir():
        raise InputFileError(f"{what} {path}: is a directory, expected a file name")
    return path


def temporary_sibling(dest: Path, directory: bool) -> Path:
    """A fresh ``.NAME.tmp-PID-XXXX`` file or directory in ``dest``'s folder."""
    prefix = f"{_tmp_prefix(dest)}{os.getpid()}-"
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=dest.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, dir=dest.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_directory(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``dest``; rename it to ``dest`` when the block ends normally.

    ``dest`` must not exist (an existing directory is never replaced here) and its folder must exist. Any
    exception, KeyboardInterrupt included, removes the temporary and leaves no ``dest``.
    """
    dest = Path(dest)
    remove_stale_temporaries(dest)
    tmp = temporary_sibling(dest, directory=True)
    try:
        yield tmp
        raise_if_interrupted()
        os.rename(tmp, dest)  # fails (instead of merging) if dest appeared meanwhile
    except BaseException:
        remove_tree(tmp)
        raise


def remove_tree(path: Path, attempts: int = 100, pause_s: float = 0.02) -> None:
    """Remove a directory tree, again while it still exists: a writer thread of this process (an Orbax save
    being interrupted) may add a file while the first pass runs, which leaves a non-empty directory behind."""
    for _ in range(attempts):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
        time.sleep(pause_s)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``path`` completely or not at all: a temporary beside it, fsynced, then renamed over it."""
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = temporary_sibling(path, directory=False)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        raise_if_interrupted()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class PartialFile:
    """A binary file streamed to ``NAME.partial`` and renamed to ``NAME`` by ``commit()``.

    Readers can follow ``NAME.partial`` while it grows; ``NAME`` only ever appears complete, and an existing
    ``NAME`` is untouched until then. ``abort()`` (or leaving a ``with`` block by an exception) removes the
    partial file. Seekable, so formats with a header written last (wav) work.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self._f = open(self.partial, "w+b")
        self.committed = False

    def write(self, data) -> int:
        return self._f.write(data)

    def seek(self, *args) -> int:
        return self._f.seek(*args)

    def tell(self) -> int:
        return self._f.tell()

    def flush(self) -> None:
        self._f.flush()

    def commit(self) -> Path:
        """Rename the complete file into place (a failure here, an interruption included, removes it)."""
        try:
            raise_if_interrupted()
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self.partial, self.path)
        except BaseException:
            self.abort()
            raise
        self.committed = True
        return self.path

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        if not self.committed:
            with contextlib.suppress(FileNotFoundError):
                self.partial.unlink()

    def __enter__(self) -> "PartialFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self.committed:
            self.commit()
        else:
            self.abort()
