"""A results directory that appears only complete: the run writes ``OUT.partial`` and renames it to ``OUT``.

- A run into an existing ``OUT`` (or beside an interrupted run's ``OUT.partial``) is refused unless
  ``resume`` (continue from what is there) or ``overwrite`` (start over; the old results stay until the new
  ones are complete) is given.
- ``resume``: an interrupted run's ``OUT.partial`` is continued in place; a finished ``OUT`` is copied to
  ``OUT.partial`` first (so it is intact until the continued run completes).
- A failed or interrupted run removes ``OUT.partial``, except for a resumable kind whose run already left
  training checkpoints there (then the message says how to continue). ``OUT`` itself is never touched by a
  run that does not complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from omni_jax.atomic import PARTIAL_SUFFIX, check_output_parent, raise_if_interrupted, remove_tree
from omni_jax.errors import UsageError

DEFAULT_ROOT = Path("results")


class ResultsDirectory:
    def __init__(self, final: str | Path, *, resume: bool = False, overwrite: bool = False, log=print):
        self.final = Path(final)
        self.staging = self.final.with_name(self.final.name + PARTIAL_SUFFIX)
        self.log = log
        if resume and overwrite:
            raise UsageError("--resume and --overwrite exclude each other")
        if self.final.parent == DEFAULT_ROOT:
            DEFAULT_ROOT.mkdir(exist_ok=True)
        check_output_parent(self.final, "results directory", directory=True)
        if not (resume or overwrite):
            if self.final.exists():
                raise UsageError(f"{self.final}: results already exist (--resume to continue that run, "
                                 "--overwrite to replace them, or --out elsewhere)")
            if self.staging.exists():
                raise UsageError(f"{self.staging}: an interrupted run's results are there (--resume to continue "
                                 "it, --overwrite to start over)")
        if self.final.exists() and not self.final.is_dir():
            raise UsageError(f"{self.final}: exists and is not a directory")
        self.resume, self.overwrite = resume, overwrite

    def open(self) -> Path:
        """Create (or reuse, when resuming) ``OUT.partial``; returns it."""
        if self.overwrite and self.staging.exists():
            shutil.rmtree(self.staging)
        if self.resume and not self.staging.exists() and self.final.is_dir():
            self.log(f"resuming from {self.final} (copied to {self.staging} until the run completes)")
            shutil.copytree(self.final, self.staging, symlinks=True)
        elif self.resume and self.staging.exists():
            self.log(f"resuming the interrupted run in {self.staging}")
        self.staging.mkdir(exist_ok=True)
        return self.staging

    def publish(self) -> Path:
        """Rename ``OUT.partial`` to ``OUT`` (replacing an old ``OUT`` only now)."""
        raise_if_interrupted()
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.rename(self.final, old)
            os.rename(self.staging, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.staging, self.final)
        return self.final

    def discard(self, resumable: bool) -> None:
        """After a failure: keep ``OUT.partial`` only when it holds a resumable run's checkpoints."""
        if not self.staging.exists():
            return
        artifacts = self.staging / "artifacts"
        if resumable and artifacts.is_dir() and any(p.is_file() for p in artifacts.rglob("*")):
            self.log(f"the run's checkpoints are kept in {self.staging}: rerun the same command with --resume "
                     "to continue it")
            return
        remove_tree(self.staging)
