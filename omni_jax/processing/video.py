"""Video preprocessing: decode (PyAV, rgb24), optional frame sampling, resize, normalise, patchify.

Reference: transformers 5.23 ``Qwen2VLVideoProcessor`` as configured by ``Qwen3OmniMoeProcessor``. What HF
does, reproduced here bit-exactly:

- **Frames.** ``do_sample_frames`` is False by default: every decoded frame is used. With sampling on
  (``fps=`` or ``num_frames=``), indices are ``arange(0, total, total / n).int()`` where ``n`` is
  ``num_frames`` rounded to a multiple of ``temporal_patch_size``, or, from ``fps``,
  ``floor(clamp(total / video_fps * fps, min_frames=4, min(max_frames=768, total) floored to a multiple of
  temporal_patch_size) / temporal_patch_size) * temporal_patch_size``.
- **Size.** The Omni processor overrides the video size to ``shortest_edge = 128*32*32`` (min pixels) and
  ``longest_edge = 768*32*32`` (max pixels per frame); ``smart_resize`` with factor 32 as for images.
  ``cap_pixels_per_frame`` (HF default None -> False, with a warning that it will change) can bound the
  per-frame budget by ``0.9 * max_video_tokens * 32 * 32 * 2 / n_frames``.
- **Resize** is torchvision's (HF video processors always use the torchvision backend): uint8 antialiased
  bicubic, reproduced in numpy by ``image.resize_bicubic_torch``. **Normalise** fused:
  ``(x - 255*mean) / (255*std)`` in float32.
- **Temporal padding**: the frame count is padded to a multiple of ``temporal_patch_size`` (2) by repeating
  the last frame; ``grid_t = frames / 2``.
- **Patch rows** (t, block row, block col, in-block row, in-block col) x (channel, temporal, y, x).
- **Time per grid**: the processor sets ``video_second_per_grid = temporal_patch_size / fps`` where
  ``fps`` is the value *passed to the processor call*, defaulting to **1.0** whatever the video's real frame
  rate and whether or not frames were sampled. ``preprocess_videos(..., fps=None)`` follows that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from omni_jax.errors import InputFileError
from omni_jax.processing.image import (ImageLoadError, VisionPreprocessConfig, as_rgb_array, load_image,
                                       normalize_fused, patchify, resize_bicubic_torch, smart_resize)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class VideoLoadError(InputFileError):
    """A video that cannot be read (missing, not a video, no frames, inconsistent frame sizes)."""


@dataclass(frozen=True)
class VideoPreprocessConfig:
    """Video settings: patch sizes and mean/std from preprocessor_config.json, sizes from the Omni processor."""

    vision: VisionPreprocessConfig = field(default_factory=VisionPreprocessConfig)
    min_pixels: int = 128 * 32 * 32
    max_pixels: int = 768 * 32 * 32
    min_frames: int = 4
    max_frames: int = 768
    cap_pixels_per_frame: bool = False
    max_video_tokens: int = 128000

    @classmethod
    def from_file(cls, path, **overrides) -> "VideoPreprocessConfig":
        return cls(vision=VisionPreprocessConfig.from_file(path), **overrides)


@dataclass(frozen=True)
class DecodedVideo:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    fps: float | None  # the container's average frame rate (None for frame lists / folders)


def load_video(path: Union[str, Path]) -> DecodedVideo:
    """Decode every frame of a video file with PyAV as rgb24. Bad files raise VideoLoadError."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoLoadError(f"{path}: no such file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoLoadError(f"{path}: no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else None
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except VideoLoadError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoLoadError(f"{path}: not a readable video ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not frames:
        raise VideoLoadError(f"{path}: no decodable frames")
    return DecodedVideo(np.stack(frames).astype(np.uint8), fps)


def load_frame_folder(folder: Union[str, Path]) -> DecodedVideo:
    """A folder of image files, in name order, as video frames (HF's path loader: EXIF, convert('RGB'))."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise VideoLoadError(f"{folder}: no image files to use as frames")
    try:
        return DecodedVideo(_stack([load_image(p, alpha="drop") for p in files], str(folder)), None)
    except ImageLoadError as e:
        raise VideoLoadError(f"{folder}: {e}") from None


def _stack(frames: list[np.ndarray], name: str) -> np.ndarray:
    if not frames:
        raise VideoLoadError(f"{name}: no frames")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise VideoLoadError(f"{name}: frames differ in size {sorted(shapes)}")
    return np.stack(frames)


def as_video(video, name: str = "video") -> DecodedVideo:
    """A file path, a folder of frames, a uint8 array [T, H, W(, C)], or a list of frames -> DecodedVideo."""
    if isinstance(video, DecodedVideo):
        return video
    if isinstance(video, (str, Path)):
        p = Path(video)
        return load_frame_folder(p) if p.is_dir() else load_video(p)
    if isinstance(video, np.ndarray) and video.ndim in (3, 4):
        video = list(video)
    if isinstance(video, (list, tuple)):
        try:
            return DecodedVideo(_stack([as_rgb_array(f, alpha="drop", name=f"{name} frame {i}")
                                        for i, f in enumerate(video)], name), None)
        except ImageLoadError as e:
            raise VideoLoadError(str(e)) from None
    raise VideoLoadError(f"{name}: expected a path, a folder, a frame array or a list of frames, got {type(video).__name__}")


def sample_frame_indices(total_frames: int, video_fps: float | None = None, fps: float | None = None,
                         num_frames: int | None = None, temporal_patch_size: int = 2, min_frames: int = 4,
                         max_frames: int = 768) -> np.ndarray:
    """HF ``Qwen2VLVideoProcessor.sample_frames``: which frames to keep (all of them if neither fps nor num_frames)."""
    if fps is not None and num_frames is not None:
        raise ValueError("num_frames and fps are mutually exclusive")
    if num_frames is not None:
        num_frames = round(num_frames / temporal_patch_size) * temporal_patch_size
    elif fps is not None:
        if video_fps is None:
            raise VideoLoadError("sampling by fps needs the video's frame rate (a video file, not a frame list)")
        max_frames = math.floor(min(max_frames, total_frames) / temporal_patch_size) * temporal_patch_size
        n = total_frames / video_fps * fps
        n = min(max(n, min_frames), max_frames, total_frames)
        num_frames = math.floor(n / temporal_patch_size) * temporal_patch_size
    if num_frames is None:
        return np.arange(total_frames)
    if num_frames > total_frames:
        raise VideoLoadError(f"cannot sample {num_frames} frames from a video of {total_frames}")
    if num_frames <= 0:
        raise VideoLoadError(f"frame sampling left no frames (total {total_frames})")
    step = total_frames / num_frames
    count = math.ceil(total_frames / step)
    # torch.arange(0, total, step) (float32 values computed in double), then .int() (truncation)
    return (np.arange(count, dtype=np.float64) * step).astype(np.float32).astype(np.int32).astype(np.int64)


def preprocess_video(video, cfg: VideoPreprocessConfig = VideoPreprocessConfig(), *, sample_fps: float | None = None,
                     num_frames: int | None = None, name: str = "video") -> tuple[np.ndarray, tuple[int, int, int]]:
    """One video -> (patch rows [t*h*w, 1536] float32, grid (t, h, w)).

    ``sample_fps`` / ``num_frames`` turn on HF's frame sampling (``do_sample_frames=True``); by default every
    frame is used, as HF does.
    """
    v = as_video(video, name=str(video) if isinstance(video, (str, Path)) else name)
    frames = v.frames
    if sample_fps is not None or num_frames is not None:
        vc = cfg.vision
        idx = sample_frame_indices(len(frames), v.fps, sample_fps, num_frames, vc.temporal_patch_size,
                                   cfg.min_frames, cfg.max_frames)
        frames = frames[idx]
    vc = cfg.vision
    max_pixels = cfg.max_pixels
    if cfg.cap_pixels_per_frame:
        total_pixels = int(cfg.max_video_tokens * vc.factor * vc.factor * 0.9)
        max_pixels = max(min(max_pixels, total_pixels * vc.temporal_patch_size // len(frames)),
                         int(cfg.min_pixels * 1.05))
    H, W = frames.shape[1:3]
    h, w = smart_resize(H, W, vc.factor, cfg.min_pixels, max_pixels)
    pixels = normalize_fused(resize_bicubic_torch(frames, (h, w)), vc)
    if pad := -len(pixels) % vc.temporal_patch_size:
        pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, axis=0)], axis=0)
    return patchify(pixels, vc)


def preprocess_videos(videos: Sequence, cfg: VideoPreprocessConfig = VideoPreprocessConfig(), *,
                      fps: float | None = None, sample_fps: float | None = None,
                      num_frames: int | None = None) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Videos -> (pixel_values_videos [N, 1536] float32, video_grid_thw [n, 3] int64, video_second_per_grid).

    ``fps`` is what the caller tells the processor the frames' rate is; it only sets
    ``video_second_per_grid = temporal_patch_size / fps`` (default 1.0 as in HF, whatever the real frame rate).
    """
    rows, grids = [], []
    for i, video in enumerate(videos):
        r, g = preprocess_video(video, cfg, sample_fps=sample_fps, num_frames=num_frames, name=f"video {i}")
        rows.append(r)
        grids.append(g)
    seconds = [cfg.vision.temporal_patch_size / (fps if fps is not None else 1.0)] * len(grids)
    if not rows:
        return np.zeros((0, cfg.vision.patch_dim), np.float32), np.zeros((0, 3), np.int64), seconds
    return np.concatenate(rows, axis=0), np.asarray(grids, dtype=np.int64), seconds
