"""Image preprocessing for the vision encoder: load, convert to RGB, smart-resize, normalise, patchify.

Reference: transformers 5.23 ``Qwen2VLImageProcessor`` family. What HF does, and
what this module reproduces:

- **Backend.** ``AutoImageProcessor`` picks the torchvision class (``Qwen2VLImageProcessor``) when torchvision
  is importable and the PIL class (``Qwen2VLImageProcessorPil``) otherwise. torchvision does not import beside
  this project's CPU torch, so here HF uses the **PIL path**, which is our default (``resize_backend="pil"``):
  ``PIL.Image.resize(BICUBIC)`` on the uint8 image, then ``float64(x) * (1/255) -> float32``, then
  ``(x - mean) / std`` in float32. This is bit-exact with HF's PIL path. The official Qwen pipeline
  (qwen_omni_utils) also resizes with PIL bicubic before the processor, so it agrees with this default.
  ``resize_backend="torch"`` reproduces the torchvision class instead: torch's uint8 antialiased bicubic
  (``F.interpolate(uint8, mode="bicubic", antialias=True)``: the same Keys a=-0.5 filter as PIL but int16
  fixed-point weights, so it differs from PIL by +-1 grey level on ~0.1-1 % of pixels) and the fused
  ``(x - 255*mean) / (255*std)`` normalisation.
- **RGB conversion** (HF ``image_transforms.convert_to_rgb`` on a PIL image): an image with an alpha band or a
  ``transparency`` entry (RGBA, LA, PA, palette/greyscale with a transparent colour) is converted to RGBA and
  **alpha-composited onto opaque white**; everything else (L, I, P without transparency, CMYK, YCbCr) goes
  through ``Image.convert("RGB")``. Note: HF's *path loader* ``image_utils.load_image`` (used when a file path
  string is handed to the processor) does ``exif_transpose`` then ``convert("RGB")``, which **drops** alpha
  (the stored colour under transparent pixels shows). ``load_image(..., alpha="drop")`` reproduces that;
  the default ``alpha="white"`` is what the image processor itself does with a PIL image (and what
  qwen_omni_utils does).
- **EXIF**: ``PIL.ImageOps.exif_transpose`` before anything else.
- **smart_resize** with ``factor = patch_size * merge_size`` (32): round each side to a multiple of 32
  (Python's round-half-to-even); if the area exceeds ``max_pixels`` scale down by ``sqrt(hw / max)`` with floor,
  if below ``min_pixels`` scale up with ceil; aspect ratio must be < 200.
- **patchify** rows of ``C * T * p * p`` = 1536 values ordered (channel, temporal, row, col); rows ordered
  (t, block row, block col, in-block row, in-block col); an image is repeated ``temporal_patch_size`` times.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from omni_jax.errors import InputFileError
from omni_jax.processing.assets import PREPROCESSOR_FILE


class ImageLoadError(InputFileError):
    """An image file that cannot be read (missing, not an image, truncated, empty, unusable shape)."""


@dataclass(frozen=True)
class VisionPreprocessConfig:
    """Image/video preprocessing settings, as in a checkpoint's preprocessor_config.json."""

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 3136
    max_pixels: int = 12845056
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    resize_backend: str = "pil"  # "pil" (HF's choice without torchvision) or "torch" (HF's torchvision class)

    def __post_init__(self):
        if self.resize_backend not in ("pil", "torch"):
            raise ValueError(f"resize_backend must be 'pil' or 'torch', got {self.resize_backend!r}")

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> "VisionPreprocessConfig":
        b = cls()
        size = d.get("size") or {}
        kw = dict(
            patch_size=int(d.get("patch_size", b.patch_size)),
            temporal_patch_size=int(d.get("temporal_patch_size", b.temporal_patch_size)),
            merge_size=int(d.get("merge_size", b.merge_size)),
            min_pixels=int(d.get("min_pixels", size.get("shortest_edge", b.min_pixels))),
            max_pixels=int(d.get("max_pixels", size.get("longest_edge", b.max_pixels))),
            image_mean=tuple(float(v) for v in d.get("image_mean", b.image_mean)),
            image_std=tuple(float(v) for v in d.get("image_std", b.image_std)),
            rescale_factor=float(d.get("rescale_factor", b.rescale_factor)),
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_file(cls, path: Union[str, Path] = PREPROCESSOR_FILE, **overrides) -> "VisionPreprocessConfig":
        """Read a preprocessor_config.json (or a checkpoint directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "preprocessor_config.json"
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read preprocessor config ({e})") from None
        return cls.from_dict(d, **overrides)


# ----------------------------------------------------------------------------------------------- loading
def to_rgb(image, alpha: str = "white"):
    """PIL image -> PIL RGB image, as HF's convert_to_rgb (alpha="white") or load_image (alpha="drop")."""
    import PIL.Image

    if alpha not in ("white", "drop"):
        raise ValueError(f"alpha must be 'white' or 'drop', got {alpha!r}")
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if alpha == "white" and has_alpha:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: Union[str, Path], alpha: str = "white") -> np.ndarray:
    """Read an image file -> uint8 [H, W, 3] RGB (EXIF orientation applied). Bad files raise ImageLoadError."""
    import PIL.Image
    import PIL.ImageOps

    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: empty file")
    try:
        with PIL.Image.open(path) as im:
            im.load()
            im = PIL.ImageOps.exif_transpose(im)
            rgb = to_rgb(im, alpha)
    except PIL.UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"{path}: corrupt or truncated image ({e})") from None
    arr = np.asarray(rgb, dtype=np.uint8)
    _check_shape(arr, str(path))
    return arr


def as_rgb_array(image, alpha: str = "white", name: str = "image") -> np.ndarray:
    """A path, PIL image, or uint8 array ([H, W], [H, W, 1|3|4]) -> uint8 [H, W, 3]."""
    import PIL.Image

    if isinstance(image, (str, Path)):
        return load_image(image, alpha)
    if isinstance(image, PIL.Image.Image):
        arr = np.asarray(to_rgb(image, alpha), dtype=np.uint8)
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ImageLoadError(f"{name}: expected a uint8 array, got {arr.dtype}")
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
            raise ImageLoadError(f"{name}: expected [H, W] or [H, W, 1|3|4] pixels, got shape {arr.shape}")
        if arr.shape[-1] == 4:
            arr = np.asarray(to_rgb(PIL.Image.fromarray(arr, "RGBA"), alpha), dtype=np.uint8)
        elif arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
    _check_shape(arr, name)
    return np.ascontiguousarray(arr)


def _check_shape(arr: np.ndarray, name: str) -> None:
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageLoadError(f"{name}: zero-size image ({arr.shape[1]}x{arr.shape[0]})")


# ----------------------------------------------------------------------------------------------- resizing
def smart_resize(height: int, width: int, factor: int = 32, min_pixels: int = 3136,
                 max_pixels: int = 12845056) -> tuple[int, int]:
    """HF ``smart_resize``: sides multiples of ``factor``, area within [min_pixels, max_pixels], aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise ImageLoadError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resize_bicubic_pil(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [h, w, 3] with PIL's bicubic filter (HF's PIL backend)."""
    import PIL.Image

    h, w = size
    if (h, w) == rgb.shape[:2]:
        return rgb
    return np.asarray(PIL.Image.fromarray(rgb).resize((w, h), resample=PIL.Image.BICUBIC), dtype=np.uint8)


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _torch_aa_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Banded int16 fixed-point weights as torch's uint8 antialiased bicubic computes them.

    Returns (tap indices [out, K], integer weights [out, K] as int32, precision bits).
    """
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    max_size = int(math.ceil(support)) * 2 + 1
    taps = np.zeros((out_size, max_size), dtype=np.int64)
    weights = np.zeros((out_size, max_size), dtype=np.float64)
    wt_max = 0.0
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(max(min(int(center + support + 0.5), in_size) - xmin, 0), max_size)
        w = _cubic((np.arange(xsize) + xmin - center + 0.5) * invscale)
        total = w.sum()
        if total != 0.0:
            w = w / total
            wt_max = max(wt_max, float(w.max()))
        weights[i, :xsize] = w
        taps[i] = np.minimum(xmin + np.arange(max_size), in_size - 1)
    precision = 0
    while precision < 22 and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    v = weights * (1 << precision)
    ints = np.trunc(np.where(v < 0, v - 0.5, v + 0.5)).astype(np.int32)
    return taps, ints, precision


def _torch_aa_pass(x: np.ndarray, in_size: int, out_size: int, axis: int) -> np.ndarray:
    """One separable pass over ``axis`` of a uint8 array: clip((2^(p-1) + sum w*x) >> p), integer-exact."""
    taps, weights, precision = _torch_aa_weights(in_size, out_size)
    moved = np.moveaxis(x, axis, -1)  # [..., in]
    flat = moved.reshape(-1, in_size)
    out = np.empty((flat.shape[0], out_size), dtype=np.uint8)
    rows = max(1, (1 << 22) // (out_size * taps.shape[1]))  # bound the gathered block's memory
    for r0 in range(0, flat.shape[0], rows):
        block = flat[r0:r0 + rows].astype(np.int32)[:, taps]  # [rows, out, K]
        acc = np.einsum("rok,ok->ro", block, weights.astype(np.int64)) + (1 << (precision - 1))
        out[r0:r0 + rows] = np.clip(acc >> precision, 0, 255)
    return np.moveaxis(out.reshape(moved.shape[:-1] + (out_size,)), -1, axis)


def resize_bicubic_torch(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [..., H, W, C] -> uint8 [..., h, w, C] exactly as torch's ``F.interpolate(uint8, "bicubic",
    antialias=True)`` (what torchvision's ``resize`` and HF's torchvision image/video processors run on CPU):
    a horizontal pass then a vertical pass, each rounding back to uint8."""
    h, w = size
    H, W = rgb.shape[-3], rgb.shape[-2]
    out = rgb
    if w != W:
        out = _torch_aa_pass(out, W, w, axis=-2)
    if h != H:
        out = _torch_aa_pass(out, H, h, axis=-3)
    return out


# ----------------------------------------------------------------------------------------------- pixels
def normalize_pil_path(rgb: np.ndarray, cfg: VisionPreprocessConfig) -> np.ndarray:
    """uint8 [..., 3] -> float32, HF PIL path: float64(x) * rescale -> float32, then (x - mean) / std."""
    x = (rgb.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    mean = np.asarray(cfg.image_mean, dtype=np.float32)
    std = np.asarray(cfg.image_std, dtype=np.float32)
    return (x - mean) / std


def normalize_fused(rgb: np.ndarray, cfg: VisionPreprocessConfig) -> np.ndarray:
    """uint8 [..., 3] -> float32, HF torchvision path: (x - mean/rescale) / (std/rescale) in float32."""
    inv = 1.0 / cfg.rescale_factor
    mean = (np.asarray(cfg.image_mean, dtype=np.float32) * np.float32(inv)).astype(np.float32)
    std = (np.asarray(cfg.image_std, dtype=np.float32) * np.float32(inv)).astype(np.float32)
    return (rgb.astype(np.float32) - mean) / std


def patchify(frames: np.ndarray, cfg: VisionPreprocessConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """float32 [T, H, W, 3] (T a multiple of temporal_patch_size) -> rows [t*h*w, 3*T'*p*p] and grid (t, h, w).

    Row order (t, block row, block col, in-block row, in-block col); each row is (channel, temporal, y, x).
    """
    T, H, W, C = frames.shape
    p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    if T % tp or H % (p * m) or W % (p * m):
        raise ValueError(f"frames of shape {frames.shape} do not tile into {tp}x{p * m}x{p * m} blocks")
    gt, gh, gw = T // tp, H // p, W // p
    x = frames.reshape(gt, tp, gh // m, m, p, gw // m, m, p, C)
    # -> (gt, gh/m, gw/m, m_row, m_col, C, tp, p_row, p_col)
    x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, C * tp * p * p)), (gt, gh, gw)


def preprocess_image(image, cfg: VisionPreprocessConfig = VisionPreprocessConfig(), alpha: str = "white",
                     name: str = "image") -> tuple[np.ndarray, tuple[int, int, int]]:
    """One image (path, PIL image or uint8 array) -> (patch rows [h*w, 1536] float32, grid (1, h, w))."""
    rgb = as_rgb_array(image, alpha, name=str(image) if isinstance(image, (str, Path)) else name)
    H, W = rgb.shape[:2]
    h, w = smart_resize(H, W, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    if cfg.resize_backend == "pil":
        pixels = normalize_pil_path(resize_bicubic_pil(rgb, (h, w)), cfg)
    else:
        pixels = normalize_fused(resize_bicubic_torch(rgb, (h, w)), cfg)
    frames = np.broadcast_to(pixels[None], (cfg.temporal_patch_size,) + pixels.shape)
    return patchify(frames, cfg)


def preprocess_images(images: Sequence, cfg: VisionPreprocessConfig = VisionPreprocessConfig(),
                      alpha: str = "white") -> tuple[np.ndarray, np.ndarray]:
    """Several images -> (pixel_values [sum N_i, 1536] float32, image_grid_thw [n, 3] int64), as HF's processor."""
    rows, grids = [], []
    for i, image in enumerate(images):
        r, g = preprocess_image(image, cfg, alpha, name=f"image {i}")
        rows.append(r)
        grids.append(g)
    if not rows:
        return np.zeros((0, cfg.patch_dim), np.float32), np.zeros((0, 3), np.int64)
    return np.concatenate(rows, axis=0), np.asarray(grids, dtype=np.int64)


def num_image_tokens(grid_thw: Sequence[int], merge_size: int = 2) -> int:
    """LLM tokens (<|image_pad|> count) for one grid."""
    t, h, w = (int(v) for v in grid_thw)
    return t * h * w // (merge_size * merge_size)
