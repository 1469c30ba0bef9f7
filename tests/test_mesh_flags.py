"""Bad mesh and multi-process flags: one line naming the flag (or the weight and dimension), exit 2, nothing
written — before any checkpoint is loaded. In this 1-device test process, and a subprocess for --distributed."""

import os
import re
import subprocess
import sys

import pytest

from omni_jax import generate
from omni_jax.distributed import DistributedError
from omni_jax.sharding import MeshSpecError, ShardingError


@pytest.mark.parametrize("extra, needle", [
    (["--mesh", "pipeline=2"], "unknown axis 'pipeline'"),
    (["--mesh", "expert=3"], "does not split over expert=3"),
    (["--mesh", "expert=8"], "needs 8 devices, 1 available"),
    (["--coordinator", "127.0.0.1:1"], "--coordinator needs --num-processes and --process-id"),
    (["--coordinator", "nohostport", "--num-processes", "2", "--process-id", "0"], "expected HOST:PORT"),
    (["--num-processes", "2"], "--num-processes / --process-id need --coordinator"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], "--process-id 2: must lie in 0..1"),
])
def test_bad_mesh_flags(tiny_ckpt, tmp_path, capsys, extra, needle):
    wav = tmp_path / "out.wav"
    code = generate.main(["--checkpoint", str(tiny_ckpt), "--prompt", "hi", "--max-new-tokens", "2",
                          "--wav-out", str(wav), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], (code, err)
    if "expert=3" in extra:  # the weight and the dimension are named
        assert re.search(r"error: [\w.]+: dimension \d \(\w+, size \d+ of shape", err[0]), err
    assert not wav.exists()


def test_distributed_without_coordinator(tiny_ckpt, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR")}
    wav = tmp_path / "out.wav"
    p = subprocess.run([sys.executable, "-m", "omni_jax.generate", "--checkpoint", str(tiny_ckpt), "--prompt", "hi",
                        "--wav-out", str(wav), "--distributed"], capture_output=True, text=True, env=env, timeout=300)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and "--distributed: no coordinator found" in err[0], p.stderr
    assert not wav.exists()


def test_api_errors_are_usage_errors(tiny_ckpt):
    import omni_jax

    with pytest.raises(ShardingError, match="does not split over expert=3"):
        omni_jax.load(tiny_ckpt, mesh="expert=3")
    with pytest.raises(MeshSpecError, match="needs 8 devices"):
        omni_jax.load(tiny_ckpt, mesh="fsdp=8")
    with pytest.raises(DistributedError, match="unknown keys"):
        omni_jax.load(tiny_ckpt, distributed={"coordinator": "h:1", "processes": 2})
