"""Shared helpers for the vision tests: torchvision for HF's video processor, test media, HF -> module fill."""

from __future__ import annotations

import functools
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from omni_jax.weights.mapping import flatten, unflatten

REPO = Path(__file__).resolve().parent.parent
# torchvision is only needed by the tests (HF's video processor imports it). PyPI's wheel does not import
# beside the CPU torch 2.13 wheel (its C ops target CUDA torch), so it is installed *outside* site-packages
# (`pip install --no-deps --target .venv/extra-torchvision torchvision==0.28.0`) where it cannot change
# which backend other code's AutoImageProcessor picks, and imported here with its op registration stubbed
# (``torchvision._meta_registrations``). Override the location with OMNI_JAX_TORCHVISION_DIR.
TORCHVISION_DIR = Path(os.environ.get("OMNI_JAX_TORCHVISION_DIR", REPO / ".venv" / "extra-torchvision"))


def _torchvision_path_setup() -> None:
    """Make torchvision importable in *this* process (call before transformers is imported)."""
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    if TORCHVISION_DIR.is_dir() and str(TORCHVISION_DIR) not in sys.path:
        sys.path.append(str(TORCHVISION_DIR))


@functools.lru_cache(maxsize=None)
def torchvision_available() -> bool:
    import subprocess

    code = "import sys; sys.path.insert(0, %r); import vision_helpers as v; v._torchvision_path_setup(); import torchvision"
    r = subprocess.run([sys.executable, "-c", code % str(Path(__file__).parent)], capture_output=True)
    return r.returncode == 0


def run_hf_with_torchvision(job: str, arrays: dict, options: dict | None = None) -> dict:
    """Run an HF processor that needs torchvision in a fresh process and return its outputs.

    transformers decides at import time whether torchvision exists, so it must see torchvision from the start:
    a subprocess does that regardless of what this test session imported before. Skips if unavailable.
    """
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inp, **arrays)
        code = ("import sys; sys.path.insert(0, %r); import vision_helpers as v; "
                "v._subprocess_main(%r, %r, %r, %r)") % (str(Path(__file__).parent), job, str(inp), str(out),
                                                       json.dumps(options or {}))
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if r.returncode and "No module named 'torchvision'" in r.stderr:
            pytest.skip(f"torchvision not importable (looked in {TORCHVISION_DIR}); see tests/vision_helpers.py")
        if r.returncode:
            raise RuntimeError(f"HF subprocess {job} failed:\n{r.stderr[-3000:]}")
        with np.load(out) as z:
            return {k: z[k] for k in z.files}


def run_hf_batch_with_torchvision(jobs: list[tuple[str, dict, dict]]) -> list[dict]:
    """Several ``run_hf_with_torchvision`` jobs in one subprocess (one torch/transformers import)."""
    arrays = {f"j{i}__{k}": v for i, (_, arr, _) in enumerate(jobs) for k, v in arr.items()}
    opts = {"jobs": [[job, o] for job, _, o in jobs]}
    flat = run_hf_with_torchvision("batch", arrays, opts)
    return [{k.split("__", 1)[1]: v for k, v in flat.items() if k.startswith(f"j{i}__")} for i in range(len(jobs))]


def _subprocess_main(job: str, inp: str, out: str, options_json: str) -> None:
    import json

    if job == "batch":
        import tempfile

        options = json.loads(options_json)
        with np.load(inp) as z:
            arrays = {k: z[k] for k in z.files}
        merged = {}
        with tempfile.TemporaryDirectory() as tmp:
            for i, (sub, sub_opts) in enumerate(options["jobs"]):
                sub_in, sub_out = Path(tmp) / f"in{i}.npz", Path(tmp) / f"out{i}.npz"
                prefix = f"j{i}__"
                np.savez(sub_in, **{k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
                _subprocess_main(sub, str(sub_in), str(sub_out), json.dumps(sub_opts))
                with np.load(sub_out) as z:
                    merged.update({prefix + k: z[k] for k in z.files})
        np.savez(out, **merged)
        return
    _torchvision_path_setup()
    import PIL.Image
    import torch

    torch.set_num_threads(1)
    options = json.loads(options_json)
    with np.load(inp) as z:
        arrays = {k: z[k] for k in z.files}
    if job == "image":
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

        proc = Qwen2VLImageProcessor(**image_processor_kwargs())
        modes = options["modes"]
        images = [PIL.Image.fromarray(arrays[f"img{i}"], modes[i]) for i in range(len(modes))]
        res = proc(images=images, return_tensors="np")
        np.savez(out, pixel_values=res["pixel_values"], grid=res["image_grid_thw"])
    elif job == "video":
        proc = hf_video_processor(**options.get("processor", {}))
        if "paths" in options:
            videos = options["paths"]
        else:
            videos = [arrays[f"video{i}"] for i in range(options["n"])]
        res = proc(videos=videos, return_tensors="np", cap_pixels_per_frame=False, **options.get("call", {}))
        np.savez(out, pixel_values=res["pixel_values_videos"], grid=res["video_grid_thw"])
    elif job == "sample":
        from transformers.video_utils import VideoMetadata

        proc = hf_video_processor()
        out_arrays = {}
        for i, case in enumerate(options["cases"]):
            meta = VideoMetadata(total_num_frames=case["total"], fps=case.get("video_fps"))
            idx = proc.sample_frames(meta, fps=case.get("fps"), num_frames=case.get("num_frames"))
            out_arrays[f"case{i}"] = np.asarray(idx)
        np.savez(out, **out_arrays)
    else:
        raise ValueError(job)


def image_processor_kwargs(**over) -> dict:
    import json

    from omni_jax.processing.assets import PREPROCESSOR_FILE

    d = json.loads(Path(PREPROCESSOR_FILE).read_text())
    kw = {k: d[k] for k in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std",
                            "min_pixels", "max_pixels")}
    kw.update(over)
    return kw


def hf_video_processor(**overrides):
    """HF's Qwen2VLVideoProcessor configured as the Omni processor configures it (preset + video size).
    Needs torchvision importable before transformers: use from run_hf_with_torchvision."""
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    kw = image_processor_kwargs()
    kw.pop("min_pixels"), kw.pop("max_pixels")
    kw["size"] = {"shortest_edge": 128 * 32 * 32, "longest_edge": 768 * 32 * 32}
    kw.update(overrides)
    return Qwen2VLVideoProcessor(**kw)


def sample_photo_path() -> Path:
    import matplotlib

    return Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"


def write_video(path: Path, frames: np.ndarray, fps: int = 4, codec: str = "mpeg4") -> Path:
    """Write uint8 [T, H, W, 3] frames with PyAV (H, W even)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def fill_from_hf(module, rules, hf_state: dict) -> None:
    """Write HF tensors into an NNX module through its rules (until the lead's generic loader exists)."""
    import jax.numpy as jnp
    from flax import nnx

    from omni_jax.models.common import pure_params

    params = {k: np.array(v) for k, v in flatten(pure_params(module)).items()}
    for name, tensor in hf_state.items():
        hits = [(r, r.match(name)) for r in rules]
        hits = [(r, idx) for r, idx in hits if idx is not None]
        assert len(hits) == 1, f"{name}: matched {len(hits)} rules"
        rule, idx = hits[0]
        value = rule.to_param(np.asarray(tensor, dtype=np.float32))
        slot = params[rule.param]
        target = slot[idx] if idx else slot
        if rule.part is not None:
            k, n = rule.part
            size = target.shape[-1] // n
            target[..., k * size:(k + 1) * size] = value
        else:
            assert target.shape == value.shape, f"{name}: {value.shape} vs slot {rule.param}{list(idx)} {target.shape}"
            target[...] = value
    state = nnx.state(module, nnx.Param)
    nested = unflatten({k: jnp.asarray(v) for k, v in params.items()})
    nnx.replace_by_pure_dict(state, nested)
    nnx.update(module, state)


