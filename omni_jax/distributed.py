"""Multi-host runs: ``jax.distributed.initialize`` from flags or arguments, and who prints and writes.

Every process runs the same program on its own devices; the mesh (``omni_jax.sharding.make_mesh``) spans
every process's devices, each process loads only the pieces of the weights its devices hold, and only
process 0 prints and writes files. On CPU the collectives go through gloo, so a multi-process run is
testable on one machine (two processes of four simulated devices each, a coordinator on 127.0.0.1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from omni_jax.errors import UsageError


class DistributedError(UsageError):
    """Inconsistent multi-process flags (a coordinator without a process count, an id out of range...)."""


@dataclass(frozen=True)
class Distributed:
    """``coordinator`` "HOST:PORT" with ``num_processes`` and ``process_id``; all None: JAX finds them
    (``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``, or the cluster: TPU pods, SLURM)."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def check(self) -> "Distributed":
        if self.coordinator is not None:
            host, sep, port = self.coordinator.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise DistributedError(f"--coordinator {self.coordinator!r}: expected HOST:PORT")
            if self.num_processes is None or self.process_id is None:
                raise DistributedError("--coordinator needs --num-processes and --process-id")
        elif self.num_processes is not None or self.process_id is not None:
            raise DistributedError("--num-processes / --process-id need --coordinator HOST:PORT (or use "
                                   "--distributed with JAX_COORDINATOR_ADDRESS set)")
        if self.num_processes is not None and self.num_processes < 1:
            raise DistributedError(f"--num-processes {self.num_processes}: must be at least 1")
        if self.process_id is not None and not 0 <= self.process_id < (self.num_processes or 1):
            raise DistributedError(f"--process-id {self.process_id}: must lie in 0..{(self.num_processes or 1) - 1}")
        return self


def as_distributed(value) -> Distributed | None:
    """None / False: one process; True: JAX's environment or cluster detection; a ``Distributed``, a dict of
    its fields, or a "HOST:PORT" string needs the rest in the dict form."""
    if value is None or value is False:
        return None
    if value is True:
        return Distributed()
    if isinstance(value, Distributed):
        return value.check()
    if isinstance(value, dict):
        unknown = set(value) - {"coordinator", "num_processes", "process_id"}
        if unknown:
            raise DistributedError(f"distributed: unknown keys {sorted(unknown)} (coordinator, num_processes, "
                                   f"process_id)")
        return Distributed(**value).check()
    raise DistributedError(f"distributed={value!r}: expected True, a dict or omni_jax.distributed.Distributed")


def initialize(dist: Distributed | None) -> None:
    """Join the multi-process run (once per process; nothing to do for a single process)."""
    if dist is None:
        return
    import jax

    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices talk through gloo
    try:
        jax.distributed.initialize(coordinator_address=dist.coordinator, num_processes=dist.num_processes,
                                   process_id=dist.process_id)
    except ValueError as e:
        if dist.coordinator is None and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
            raise DistributedError("--distributed: no coordinator found (give --coordinator HOST:PORT "
                                   "--num-processes N --process-id I, set JAX_COORDINATOR_ADDRESS, or run "
                                   "where JAX detects the cluster: TPU pods, SLURM)") from None
        raise DistributedError(f"--distributed: {str(e).splitlines()[0]}") from None


def is_primary() -> bool:
    """Whether this process prints and writes (process 0; always true for a single process)."""
    import jax

    return jax.process_index() == 0


def default_dtype() -> str:
    """bfloat16 on GPU / TPU, float32 on CPU (XLA:CPU's bf16 dots are slow)."""
    import jax

    return "float32" if jax.default_backend() == "cpu" else "bfloat16"
