"""The converter: complete, bit-identical, atomic, and clear about bad checkpoints."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from omni_jax.config import OmniConfig
from omni_jax.weights import CheckpointError, load_flat_params
from omni_jax.weights.safetensors_io import SafetensorsCheckpoint, write_safetensors

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "convert"))
import hf_to_orbax  # noqa: E402


def cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "convert" / "hf_to_orbax.py"), *map(str, args),
                           "--no-progress"], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_converted_dir_is_complete_and_bit_identical(tiny_ckpt, tmp_path, dtype):
    out = tmp_path / "out"
    r = cli(tiny_ckpt, out, "--dtype", dtype)
    assert r.returncode == 0, r.stderr
    for name in ("config.json", "vocab.json", "merges.txt", "tokenizer_config.json", "chat_template.json",
                 "preprocessor_config.json", "omni_jax_checkpoint.json"):
        assert (out / name).is_file(), name
    cfg = OmniConfig.from_file(out)
    assert cfg == OmniConfig.from_file(tiny_ckpt)
    a = load_flat_params(tiny_ckpt, cfg, dtype)
    b = load_flat_params(out, cfg, dtype)
    assert a.keys() == b.keys() and len(a) > 100
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        assert np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)), k


def test_interrupted_run_leaves_nothing(tiny_ckpt, tmp_path, monkeypatch):
    from omni_jax.weights import orbax_io

    real = orbax_io.fill_unit
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(orbax_io, "fill_unit", failing)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        hf_to_orbax.convert(tiny_ckpt, out, "bfloat16", progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def rewrite(src: Path, dst: Path, drop: str | None = None, reshape: str | None = None):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    ck = SafetensorsCheckpoint(src)
    tensors = []
    for name, info in ck.tensors.items():
        if name == drop:
            continue
        shape = info.shape
        if name == reshape:
            shape = (shape[0] + 1,) + tuple(shape[1:])
        tensors.append((name, shape, info.dtype))

    def produce(name):
        t = ck.read(name)
        if name == reshape:
            t = np.concatenate([t, t[:1]], axis=0)
        return t

    write_safetensors(dst / "model.safetensors", tensors, produce)


def one_line_error(r, *needles):
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_checkpoints_fail_in_one_line(tiny_ckpt, tmp_path):
    victim = "thinker.model.layers.1.mlp.experts.3.up_proj.weight"
    rewrite(tiny_ckpt, tmp_path / "missing", drop=victim)
    one_line_error(cli(tmp_path / "missing", tmp_path / "o1"), "missing tensor", victim)
    rewrite(tiny_ckpt, tmp_path / "shape", reshape=victim)
    one_line_error(cli(tmp_path / "shape", tmp_path / "o2"), victim, "shape")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_ckpt, corrupt)
    f = corrupt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    one_line_error(cli(corrupt, tmp_path / "o3"), "model.safetensors", "truncated")
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    one_line_error(cli(corrupt, tmp_path / "o4"), "model.safetensors", "corrupt")
    for o in ("o1", "o2", "o3", "o4"):
        assert not (tmp_path / o).exists()
    assert cli(tiny_ckpt, tmp_path / "missing").returncode == 1  # existing output dir is refused
    with pytest.raises(CheckpointError, match="missing tensor"):
        load_flat_params(tmp_path / "missing", OmniConfig.from_file(tiny_ckpt))


def test_sharded_index_loads_like_the_single_file(tiny_ckpt, tmp_path):
    """A checkpoint split into several shards with model.safetensors.index.json loads identically."""
    from omni_jax.weights.safetensors_io import write_sharded

    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_ckpt, sharded, ignore=shutil.ignore_patterns("*.safetensors"))
    ck = SafetensorsCheckpoint(tiny_ckpt)
    tensors = [(n, i.shape, i.dtype) for n, i in sorted(ck.tensors.items())]
    names = write_sharded(sharded, tensors, ck.read, max_shard_bytes=8 << 20)
    assert len(names) >= 3 and (sharded / "model.safetensors.index.json").is_file()
    cfg = OmniConfig.from_file(tiny_ckpt)
    a = load_flat_params(tiny_ckpt, cfg)
    b = load_flat_params(sharded, cfg)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    (sharded / names[1]).unlink()  # a shard listed in the index is missing
    with pytest.raises(CheckpointError, match=names[1]):
        load_flat_params(sharded, cfg)


def _start_and_wait_for_temporary(src: Path, out: Path):
    """The converter in a subprocess, stopped (SIGSTOP) once its temporary directory beside ``out`` exists."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, str(ROOT / "convert" / "hf_to_orbax.py"), str(src), str(out),
                             "--no-progress"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        tmps = list(out.parent.glob(f".{out.name}.tmp-{proc.pid}-*"))
        if tmps:
            proc.send_signal(signal.SIGSTOP)  # hold it mid-conversion
            return proc, tmps[0]
        time.sleep(0.002)
    raise AssertionError(f"the converter never wrote its temporary: {proc.communicate()[1]}")


def test_killed_converter_leaves_no_output_and_the_next_run_cleans_up(tiny_ckpt, tmp_path):
    """SIGKILL mid-conversion: no OUT_DIR, only the hidden temporary, which the next run removes; SIGTERM:
    the converter removes its temporary itself and says it was interrupted."""
    import signal

    out = tmp_path / "out"
    proc, tmp = _start_and_wait_for_temporary(tiny_ckpt, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not out.exists() and tmp.exists()
    assert tmp.name.startswith(f".out.tmp-{proc.pid}-")

    proc, tmp2 = _start_and_wait_for_temporary(tiny_ckpt, out)
    assert not tmp.exists()  # a new run to the same place removed the dead run's temporary
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and "interrupted; nothing was written" in err, err
    assert list(tmp_path.iterdir()) == []


def test_destination_under_missing_folders_is_refused(tiny_ckpt, tmp_path, capsys):
    rc = hf_to_orbax.main([str(tiny_ckpt), str(tmp_path / "no" / "such" / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == [f"hf_to_orbax: error: output directory {tmp_path / 'no' / 'such' / 'out'}: "
                               f"the folder {tmp_path / 'no' / 'such'} does not exist"]
    assert list(tmp_path.iterdir()) == []
    assert hf_to_orbax.main([str(tiny_ckpt), str(tmp_path / "o"), "--group-mb", "0"]) == 2
    assert hf_to_orbax.main([str(tiny_ckpt), str(tmp_path / "o"), "--dtype", "float8"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2 and list(tmp_path.iterdir()) == []
