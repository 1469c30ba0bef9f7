"""Expert parallelism on 8 simulated CPU devices (a subprocess: conftest's JAX has 1 device).

For meshes (data, expert) = (1, 8), (2, 4), (4, 2) and both paths (psum decode, all_to_all prefill):
outputs equal the single-device oracle to 1e-5 max abs (reached ~5e-7), the statistics match, each
device holds only E / n_expert experts, and jax.grad through the sharded layer equals the single-device
gradient (every mesh, both paths; 4 of the 6 combinations, for speed) to 1e-5 relative to each gradient's largest entry (fp32 summation order only).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omni_jax.moe.parallel import ExpertParallelError
from omni_jax.sharding import MeshSpecError, make_mesh, parse_mesh_spec

HERE = Path(__file__).parent


def test_expert_parallel_matches_single_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(HERE / "ep_check.py")], capture_output=True, text=True,
                          timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["devices"] == 8
    assert len(res["runs"]) == 7
    grads = [r for r in res["runs"] if r["grad_rel_err"] is not None]
    assert {r["mesh"] for r in grads} == {"data=1,expert=8", "data=2,expert=4", "data=4,expert=2"}
    assert {r["path"] for r in grads} == {"psum", "all_to_all"}
    for r in res["runs"]:
        assert r["y_err"] < 1e-5, r
        assert r["aux_err"] < 1e-5 and r["counts_equal"], r
        assert r["shard_experts"] == [16 // r["n_expert"]], r  # each device holds only its experts
        assert r["spec"].startswith("P('expert'"), r
    for r in grads:
        assert r["grad_rel_err"] < 1e-5, r
        assert r["grad_spec"].startswith("P('expert'"), r  # the gradient stays expert-sharded


def test_mesh_spec_parsing():
    assert parse_mesh_spec("data=2, expert=4") == {"data": 2, "expert": 4}
    for bad in ("data", "data=x", "foo=2", "data=1,data=2", ""):
        with pytest.raises(MeshSpecError):
            parse_mesh_spec(bad)
    with pytest.raises(MeshSpecError, match="needs 8 devices"):
        make_mesh("expert=8")  # this session has 1 device
    assert issubclass(ExpertParallelError, ValueError)
