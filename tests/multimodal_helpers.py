"""Shared helpers for the multimodal tests: tiny test media, and HF's Qwen3OmniMoeProcessor run in a subprocess.

HF's video processor imports torchvision, which only imports here with its op registration stubbed
(tests/vision_helpers.py), so the reference processor runs in a fresh process that sets that up first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
# Named tokens the real checkpoint's tokenizer_config.json declares (the packaged tokenizer assets lack them);
# HF's processor reads them as tokenizer attributes.
OMNI_NAMED_TOKENS = dict(image_token="<|image_pad|>", video_token="<|video_pad|>", audio_token="<|audio_pad|>",
                         vision_bos_token="<|vision_start|>", vision_eos_token="<|vision_end|>",
                         audio_bos_token="<|audio_start|>", audio_eos_token="<|audio_end|>")


# ------------------------------------------------------------------------------------------ media
def textured(h: int, w: int, seed: int) -> np.ndarray:
    """uint8 [h, w, 3]: blocky noise plus a gradient (survives resizing and video coding)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = np.repeat(np.repeat(blocks, 8, 0), 8, 1)[:h, :w].astype(np.int32)
    img[..., 0] = (img[..., 0] + np.arange(w)[None, :] * 2) % 256
    return img.astype(np.uint8)


def write_image(path: Path, h: int = 64, w: int = 96, seed: int = 0) -> Path:
    import PIL.Image

    PIL.Image.fromarray(textured(h, w, seed)).save(path)
    return path


def tone(seconds: float, rate: int, freqs=(440.0, 1250.0), seed: int = 0, channels: int = 1) -> np.ndarray:
    """float32 (n,) or (n, channels): tones with a moving amplitude plus a little noise."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    cols = []
    for c in range(channels):
        x = sum(0.25 * np.sin(2 * np.pi * (f * (1 + 0.1 * c)) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * (1 + i) * t))
                for i, f in enumerate(freqs))
        cols.append(x + 0.02 * rng.standard_normal(t.shape))
    out = np.stack(cols, 1).astype(np.float32)
    return out[:, 0] if channels == 1 else out


def write_audio(path: Path, seconds: float = 1.5, rate: int = 22050, seed: int = 0) -> Path:
    import soundfile as sf

    sf.write(str(path), tone(seconds, rate, seed=seed), rate, subtype="PCM_16")
    return path


def write_video(path: Path, n_frames: int = 4, h: int = 48, w: int = 64, fps: int = 2, seed: int = 0,
                audio_seconds: float | None = None, audio_rate: int = 44100) -> Path:
    """A tiny mpeg4 video (Matroska), optionally with a stereo pcm_s16le audio track, written with PyAV."""
    import av

    frames = np.stack([np.roll(textured(h, w, seed), 4 * i, axis=1) for i in range(n_frames)])
    with av.open(str(path), "w") as out:
        vs = out.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        ast = None
        if audio_seconds is not None:
            ast = out.add_stream("pcm_s16le", rate=audio_rate)
            ast.layout = "stereo"
        for f in frames:
            for p in vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if ast is not None:
            pcm = (np.clip(tone(audio_seconds, audio_rate, seed=seed, channels=2), -1, 1) * 32767).astype(np.int16)
            for i in range(0, len(pcm), 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[i:i + 1024].reshape(1, -1)), format="s16",
                                                   layout="stereo")
                frame.sample_rate = audio_rate
                for p in ast.encode(frame):
                    out.mux(p)
            for p in ast.encode():
                out.mux(p)
    return path


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mm_media")
    return dict(
        img_a=write_image(d / "a.png", 64, 96, 0),
        img_b=write_image(d / "b.jpg", 80, 64, 1),
        aud_a=write_audio(d / "a.wav", 1.5, 22050, 0),
        aud_b=write_audio(d / "b.flac", 2.6, 16000, 1),
        vid=write_video(d / "v.mkv", 4, 48, 64, fps=2, seed=2),
        vid_av=write_video(d / "v_audio.mkv", 4, 48, 64, fps=2, seed=3, audio_seconds=2.0),
        dir=d,
    )


# ------------------------------------------------------------------------------------------ HF processor
def hf_processor_outputs(ckpt: Path, cases: list[dict]) -> list[dict]:
    """Run HF's Qwen3OmniMoeProcessor on each case in one subprocess (torchvision stubbed in), return numpy dicts.

    A case: conversations (media values: paths, as strings), frames {path: uint8 [T, H, W, 3]} (HF gets the
    decoded frames), tracks {path: float32 16 kHz} (the decoded audio track of a video, passed with
    ``audio_from_video_indices``), load_audio_from_video (bool). Skips when torchvision is unavailable.
    """
    with tempfile.TemporaryDirectory() as tmp:
        arrays, spec = {}, []
        for i, case in enumerate(cases):
            for kind in ("frames", "tracks"):
                for j, (path, arr) in enumerate(case.get(kind, {}).items()):
                    arrays[f"{i}_{kind}_{j}"] = arr
            spec.append(dict(conversations=case["conversations"],
                             frames=list(case.get("frames", {})), tracks=list(case.get("tracks", {})),
                             load_audio_from_video=case.get("load_audio_from_video", False)))
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.json"
        np.savez(inp, **arrays)
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import multimodal_helpers as m; "
                f"m._hf_main({str(ckpt)!r}, {tmp!r})")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, timeout=600)
        if r.returncode and "No module named 'torchvision'" in r.stderr:
            pytest.skip("torchvision not importable; see tests/vision_helpers.py")
        if r.returncode:
            raise RuntimeError(f"HF processor subprocess failed:\n{r.stderr[-4000:]}")
        results = []
        for i in range(len(cases)):
            with np.load(Path(tmp) / f"out{i}.npz") as z:
                results.append({k: z[k] for k in z.files})
        return results


def _hf_main(ckpt: str, tmp: str) -> None:
    sys.path.insert(0, str(TESTS))
    import vision_helpers

    vision_helpers._torchvision_path_setup()
    import PIL.Image
    import PIL.ImageOps
    import torch
    from transformers import AutoTokenizer, Qwen3OmniMoeProcessor, WhisperFeatureExtractor
    from transformers.audio_utils import load_audio
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    torch.set_num_threads(1)
    pre = json.loads((Path(ckpt) / "preprocessor_config.json").read_text())
    image_kw = {k: pre[k] for k in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std",
                                    "min_pixels", "max_pixels")}
    proc = Qwen3OmniMoeProcessor(
        image_processor=Qwen2VLImageProcessorPil(**image_kw),
        video_processor=vision_helpers.hf_video_processor(),
        feature_extractor=WhisperFeatureExtractor(**pre),
        tokenizer=AutoTokenizer.from_pretrained(ckpt, extra_special_tokens=OMNI_NAMED_TOKENS),
        chat_template=json.loads((Path(ckpt) / "chat_template.json").read_text())["chat_template"])
    spec = json.loads((Path(tmp) / "spec.json").read_text())
    with np.load(Path(tmp) / "in.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for i, case in enumerate(spec):
        frames = {p: arrays[f"{i}_frames_{j}"] for j, p in enumerate(case["frames"])}
        tracks = {p: arrays[f"{i}_tracks_{j}"] for j, p in enumerate(case["tracks"])}
        texts, images, videos, audio, from_video = [], [], [], [], []
        for conv in case["conversations"]:
            texts.append(proc.apply_chat_template(conv, tokenize=False, add_generation_prompt=True))
            for msg in conv:
                if isinstance(msg["content"], str):
                    continue
                for item in msg["content"]:
                    if item["type"] == "image":
                        with PIL.Image.open(item["image"]) as im:
                            images.append(PIL.ImageOps.exif_transpose(im).convert("RGB"))
                    elif item["type"] == "audio":
                        audio.append(load_audio(item["audio"], sampling_rate=16000))
                        from_video.append(None)
                    elif item["type"] == "video":
                        if case["load_audio_from_video"]:
                            audio.append(tracks[item["video"]])
                            from_video.append(len(videos))
                        videos.append(frames[item["video"]])
        kw = dict(text=texts, images=images or None, videos=videos or None, audio=audio or None,
                  return_tensors="np", padding=True)
        if case["load_audio_from_video"]:
            kw.update(load_audio_from_video=True, audio_from_video_indices=from_video)
        res = proc(**kw)
        np.savez(Path(tmp) / f"out{i}.npz", **{k: np.asarray(v) for k, v in res.items()})
