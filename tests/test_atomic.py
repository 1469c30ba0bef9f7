"""Outputs appear complete or not at all (omni_jax/atomic.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from omni_jax import atomic
from omni_jax.errors import InputFileError


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_directory_publishes_only_complete(tmp_path):
    dest = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_directory(dest) as tmp:
            (tmp / "half").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic.atomic_directory(dest) as tmp:
        assert tmp.name.startswith(f".ckpt.tmp-{os.getpid()}-")
        (tmp / "full").write_text("x")
    assert [p.name for p in dest.iterdir()] == ["full"] and [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    with pytest.raises(OSError):  # an existing directory is never merged into or replaced
        with atomic.atomic_directory(dest) as tmp:
            (tmp / "other").write_text("y")
    assert [p.name for p in dest.iterdir()] == ["full"] and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dest = tmp_path / "out"
    dead = tmp_path / f".out.tmp-{_dead_pid()}-abc"
    dead.mkdir()
    (dead / "x").write_text("x")
    legacy = tmp_path / ".out.tmp-k2j3h4"  # no owner recorded
    legacy.mkdir()
    alive = tmp_path / f".out.tmp-{os.getppid()}-abc"  # a live process's
    alive.mkdir()
    other = tmp_path / ".other.tmp-1-abc"
    other.mkdir()
    assert sorted(atomic.remove_stale_temporaries(dest)) == sorted([dead, legacy])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name])


def test_atomic_write_replaces_only_when_complete(tmp_path, monkeypatch):
    path = tmp_path / "stats.json"
    path.write_text("old")
    real = os.replace

    def failing(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write_text(path, "new")
    monkeypatch.setattr(os, "replace", real)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["stats.json"]
    atomic.atomic_write_text(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_partial_file_is_renamed_when_complete_and_removed_on_failure(tmp_path):
    path = tmp_path / "speech.wav"
    path.write_bytes(b"existing")
    with pytest.raises(RuntimeError):
        with atomic.PartialFile(path) as f:
            f.write(b"half")
            assert (tmp_path / "speech.wav.partial").exists()
            raise RuntimeError
    assert path.read_bytes() == b"existing" and not (tmp_path / "speech.wav.partial").exists()
    with atomic.PartialFile(path) as f:
        f.write(b"0123")
        f.seek(0)
        f.write(b"A")
        assert path.read_bytes() == b"existing"
    assert path.read_bytes() == b"A123" and sorted(p.name for p in tmp_path.iterdir()) == ["speech.wav"]


def test_interrupt_request_blocks_every_commit(tmp_path):
    """A SIGINT/SIGTERM whose KeyboardInterrupt Python swallowed still stops the next commit."""
    atomic.request_interrupt()
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic.atomic_write_text(tmp_path / "a.json", "{}")
        with pytest.raises(KeyboardInterrupt):
            with atomic.atomic_directory(tmp_path / "d"):
                pass
        with pytest.raises(KeyboardInterrupt):
            with atomic.PartialFile(tmp_path / "w.wav") as f:
                f.write(b"x")
    finally:
        atomic.clear_interrupt_request()
    assert list(tmp_path.iterdir()) == []
    atomic.atomic_write_text(tmp_path / "a.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize("where,message", [("missing/x.wav", "the folder {p}/missing does not exist"),
                                           ("afile/x.wav", "{p}/afile is not a folder"),
                                           ("adir", "is a directory")])
def test_output_folder_checks(tmp_path, where, message):
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    with pytest.raises(InputFileError, match=message.format(p=tmp_path)):
        atomic.check_output_parent(tmp_path / where, "--wav-out")
