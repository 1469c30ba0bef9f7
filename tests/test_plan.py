"""The memory planner (``python -m omni_jax.plan``) at reduced depth, and its bad flags.

One subprocess plans the real-width model with 4 Thinker / Talker layers on ``fsdp=2,expert=4`` (8 simulated CPU
devices it sets up itself, no XLA_FLAGS) in float32 at batch 1 and a 4k context, compiling the three generation
programs (``--programs``; the encoders are left out for time): the JSON last line has every field; per device
the parameters are at most 1.05 x (model bytes / 8) + 0.15 GB; the compiled temporaries of
the Thinker decode step (Talker tap on) and of the Talker frame step stay below 1 GB and those of the 2k-token
Thinker prefill below 2 GB (the scan keeps them the same at full depth: no weight copied per step).
"""

import json
import os
import re
import subprocess
import sys

import pytest

from omni_jax import plan

GB = 1e9


def test_plan_reduced_depth_json_and_bounds():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    p = subprocess.run([sys.executable, "-m", "omni_jax.plan", "--mesh", "fsdp=2,expert=4", "--dtype", "float32",
                        "--layers", "4", "--hardware", "h100-80g", "--programs",
                        "thinker_prefill,thinker_decode,talker_step", "--json"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["mesh"] == {"fsdp": 2, "expert": 4} and out["devices"] == 8 and out["dtype"] == "float32"
    assert out["compiler"] == "cpu-simulated" and out["hardware"] == "h100-80g"
    pd = out["per_device"]
    assert set(pd) == {"params_bytes", "kv_cache_bytes", "temp_bytes", "total_bytes"}
    assert set(pd["temp_bytes"]) == {"thinker_prefill", "thinker_decode", "talker_step"}  # as --programs asks
    assert pd["params_bytes"] <= 1.05 * out["model_param_bytes"] / 8 + 0.15 * GB
    assert pd["temp_bytes"]["thinker_decode"] < 1 * GB and pd["temp_bytes"]["talker_step"] < 1 * GB
    assert pd["temp_bytes"]["thinker_prefill"] < 2 * GB
    assert pd["total_bytes"] == pd["params_bytes"] + pd["kv_cache_bytes"] + max(pd["temp_bytes"].values())
    assert out["fits"] is True and out["usable_bytes"] < 80 * 2 ** 30


@pytest.mark.parametrize("argv, needle", [
    (["--mesh", "fsdp=2,pipeline=4"], "unknown axis 'pipeline'"),
    (["--mesh", "expert=3"], "does not split over expert=3"),
    (["--hardware", "h900-1t"], "--hardware 'h900-1t': unknown"),
    (["--mesh", "expert=8", "--prefill", "8192"], "--prefill 8192: larger than --context 4096"),
    (["--mesh", "expert=8", "--programs", "thinker_decode,code2wav"], "choose from thinker_prefill"),
    ([], "give --mesh, or --hardware"),
])
def test_bad_flags_are_one_line_exit_2(argv, needle, capsys):
    assert plan.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    if "expert=3" in needle:  # names the weight and the dimension
        assert re.search(r"error: [\w.]+: dimension \d \(\w+, size \d+ of shape", err[0]), err
