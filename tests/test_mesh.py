"""Restoring a converted checkpoint onto a device mesh (8 simulated CPU devices, in a subprocess) and
generating text and speech with expert-parallel MoE: equal to the single-device run."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_restore_onto_mesh_and_generate(tiny_ckpt, tmp_path):
    out = tmp_path / "converted"
    c = subprocess.run([sys.executable, str(ROOT / "convert" / "hf_to_orbax.py"), str(tiny_ckpt), str(out),
                        "--dtype", "float32", "--group-mb", "1"], capture_output=True, text=True)
    assert c.returncode == 0, c.stderr
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, str(ROOT / "tests" / "mesh_worker.py"), str(out), str(tiny_ckpt)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["devices"] == 8
    L, E = res["full_shape"][:2]
    for spec, n_expert in (("data=1,expert=8", 8), ("data=2,expert=4", 4)):
        m = res["meshes"][spec]
        assert m["params_equal"], spec  # restored unit by unit into the shards: bit-identical
        assert m["expert_shard_shape"][:2] == [L, E // n_expert], spec  # each device holds E / n experts
        assert m["router_replicated"]
        assert m["tokens_equal"], spec
    speech = res["meshes"]["data=1,expert=8"]
    assert speech["codes_equal"] and speech["wav_max_diff"] < 1e-5  # fp32: EP sums in another order
    assert res["hf_dir_params_equal"] and res["hf_dir_expert_devices"] == 8
