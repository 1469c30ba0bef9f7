"""Beyond one process: 2 processes × 4 CPU devices (jax.distributed, gloo collectives, coordinator on
127.0.0.1) run the expert-parallel layer (both paths) over a (data=2, expert=4) mesh; the gathered global
result equals the single-process oracle to 1e-5 max abs."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).parent / "ep_multiprocess_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_single_process():
    port = free_port()
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=150)
            assert p.returncode == 0, err[-3000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r in outs:
        assert r["process_count"] == 2 and r["devices"] == 8
        assert r["psum"] < 1e-5 and r["all_to_all"] < 1e-5, r
