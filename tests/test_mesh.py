"""The whole model on 8 simulated CPU devices, and as 2 processes x 4 devices: equal to one device.

Meshes expert=8, fsdp=8, fsdp=2,expert=4, tensor=2,expert=4 and data=2,fsdp=2,expert=2 (two worker
subprocesses in parallel), each loaded from the HF or the converted directory with every weight placed by its
logical axes: the parameters are bit-identical to the single-device load, one weight of each component is
split over every weight-sharding device, and a text + image + audio prompt with speech gives the same greedy
tokens and codec codes and a waveform with correlation >= 0.9999 (fp32: the sharded sums run in another
order). The checkpoint's Code2Wav is rescaled so its waveform is unsaturated: a clamped +-1 waveform would
hide a broken Code2Wav sharding. Then the CLI as 2 processes (jax.distributed, gloo, a coordinator on 127.0.0.1)
with expert=8 and fsdp=2,expert=4 spanning both: the same output; only process 0 prints and writes.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from multimodal_helpers import write_audio, write_image

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "mesh_worker.py"
WORKERS = (("--reference", "expert=8", "fsdp=8"), ("fsdp=2,expert=4", "tensor=2,expert=4", "data=2,fsdp=2,expert=2"))
MESHES = [m for w in WORKERS for m in w if m != "--reference"]


def _env(devices: int | None = None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def runs(tiny_tamed_ckpt, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("mesh")
    converted = d / "converted"
    c = subprocess.run([sys.executable, str(ROOT / "convert" / "hf_to_orbax.py"), str(tiny_tamed_ckpt),
                        str(converted), "--dtype", "float32", "--group-mb", "1"], capture_output=True, text=True)
    assert c.returncode == 0, c.stderr
    media = dict(image=write_image(d / "m.png", 64, 96, 0), audio=write_audio(d / "m.wav", 1.5, 16000, 0))
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(converted), str(tiny_tamed_ckpt),
                               str(media["image"]), str(media["audio"]), *w], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env()) for w in WORKERS]
    out = {}
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        assert p.returncode == 0, stderr[-3000:]
        out.update({r["run"]: r for r in _lines(stdout)})
    return dict(out, converted=converted, **media)


def _same_output(got: dict, ref: dict, what: str):
    assert got["token_ids"] == ref["token_ids"], what
    assert got["codec_codes"] == ref["codec_codes"] and len(ref["codec_codes"]) > 0, what
    assert np.mean(np.abs(ref["wav"]) > 0.99) < 0.05, "saturated waveform: the comparison would prove nothing"
    corr = np.corrcoef(got["wav"], ref["wav"])[0, 1]
    print(f"{what}: wav correlation {corr:.8f}, max abs diff {np.abs(np.subtract(got['wav'], ref['wav'])).max():.2e}")
    assert corr >= 0.9999, what


@pytest.mark.parametrize("mesh", MESHES)
def test_mesh_equals_single_device(runs, mesh):
    r, ref = runs[mesh], runs["single"]
    assert r["params_equal"], mesh  # placed unit by unit / row block by row block: bit-identical
    assert all(r["split_n_ways"].values()), r["split_n_ways"]  # each device holds 1/N of every component
    assert r["weight_devices"] == (4 if mesh.startswith("data=2") else 8)
    _same_output(r, ref, mesh)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mesh", ["expert=8", "fsdp=2,expert=4"])
def test_two_processes_cli_equals_single_process(runs, mesh, tmp_path):
    port = _free_port()
    args = ["--checkpoint", str(runs["converted"]), "--prompt", "What do you see and hear?", "--image",
            str(runs["image"]), "--audio", str(runs["audio"]), "--greedy", "--max-new-tokens", "4",
            "--max-speech-frames", "3", "--json", "--mesh", mesh, "--coordinator", f"127.0.0.1:{port}",
            "--num-processes", "2"]
    procs = [subprocess.Popen([sys.executable, "-m", "omni_jax.generate", *args, "--process-id", str(i),
                               "--wav-out", str(tmp_path / f"p{i}.wav")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(4)) for i in range(2)]
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            assert p.returncode == 0, stderr[-3000:]
            outs.append(_lines(stdout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert len(outs[0]) == 1 and outs[1] == []  # only process 0 prints its result ...
    assert (tmp_path / "p0.wav").is_file() and not (tmp_path / "p1.wav").exists()  # ... and writes the wav
    _same_output(outs[0][0], runs["single"], mesh)
