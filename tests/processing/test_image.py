"""omni_jax.processing.image against HF's Qwen2VL image processors (transformers 5.23).

Tolerance: exact (0.0 max abs) for the PIL path, which is what HF's AutoImageProcessor picks here (no
torchvision); also exact for our "torch" backend against HF's torchvision class.
"""

import io
import numpy as np
import PIL.Image
import pytest
from vision_helpers import image_processor_kwargs, run_hf_with_torchvision, sample_photo_path

from omni_jax.processing.assets import PREPROCESSOR_FILE
from omni_jax.processing.image import (ImageLoadError, VisionPreprocessConfig, load_image, preprocess_images,
                                       smart_resize)


hf_kwargs = image_processor_kwargs


@pytest.fixture(scope="module")
def hf_pil():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(**hf_kwargs())


def run_hf(proc, images):
    out = proc(images=images, return_tensors="np")
    return out["pixel_values"], out["image_grid_thw"]


def check_equal(ours, ref):
    pv, grid = ours
    rpv, rgrid = ref
    np.testing.assert_array_equal(grid, rgrid)
    assert pv.dtype == np.float32 and pv.shape == rpv.shape
    assert np.abs(pv - rpv).max() == 0.0


@pytest.fixture(scope="module")
def photo():
    return PIL.Image.open(sample_photo_path())


def test_config_from_checkpoint_file():
    cfg = VisionPreprocessConfig.from_file(PREPROCESSOR_FILE)
    assert cfg.image_mean == (0.5, 0.5, 0.5) and cfg.min_pixels == 3136 and cfg.max_pixels == 12845056
    assert cfg.patch_dim == 1536 and cfg.factor == 32
    assert VisionPreprocessConfig.from_dict({"size": {"shortest_edge": 10, "longest_edge": 20}}).max_pixels == 20


def test_auto_backend_here_is_pil(tmp_path):
    """Documented choice: without torchvision, AutoImageProcessor gives the PIL class (our default path)."""
    import transformers.utils.import_utils as iu

    if iu.is_torchvision_available():
        pytest.skip("torchvision visible to transformers in this process")
    from transformers import AutoImageProcessor

    (tmp_path / "preprocessor_config.json").write_text(PREPROCESSOR_FILE.read_text())
    proc = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(proc).__name__ == "Qwen2VLImageProcessorPil"


def test_photographs_of_odd_sizes(hf_pil, photo):
    cfg = VisionPreprocessConfig.from_file(PREPROCESSOR_FILE)
    images = [photo, photo.crop((7, 11, 7 + 333, 11 + 517)), photo.resize((97, 61)), photo.crop((0, 0, 41, 500))]
    ours = preprocess_images(images, cfg)
    check_equal(ours, run_hf(hf_pil, images))
    assert [tuple(g) for g in ours[1]] == [(1, 38, 32), (1, 32, 20), (1, 4, 6), (1, 32, 2)]


def rgba_image(rng):
    a = rng.integers(0, 256, (45, 70, 4), dtype=np.uint8)
    a[..., 3] = np.linspace(0, 255, 70).astype(np.uint8)[None]
    return PIL.Image.fromarray(a, "RGBA")


def test_alpha_grey_palette(hf_pil, photo):
    rng = np.random.default_rng(0)
    grey = photo.convert("L").crop((0, 0, 200, 150))
    palette = photo.crop((0, 0, 120, 90)).convert("P", palette=PIL.Image.ADAPTIVE, colors=16)
    palette_transparent = palette.copy()
    palette_transparent.info["transparency"] = 3
    la = PIL.Image.merge("LA", [grey, grey.point(lambda v: 255 - v)])
    images = [rgba_image(rng), grey, palette, palette_transparent, la]
    check_equal(preprocess_images(images), run_hf(hf_pil, images))
    # alpha is composited onto white, not dropped: fully transparent pixels become white (1.0 after normalising)
    clear = PIL.Image.fromarray(np.zeros((64, 64, 4), np.uint8), "RGBA")
    pv, _ = preprocess_images([clear])
    assert np.all(pv == 1.0)
    pv_drop, _ = preprocess_images([clear], alpha="drop")
    assert np.all(pv_drop == -1.0)


def test_files_with_exif_and_alpha_match_hf_path_loader(hf_pil, photo, tmp_path):
    """File paths through HF's processor go via image_utils.load_image: exif_transpose + convert('RGB')."""
    exif = photo.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 CW on display
    jpg = tmp_path / "rotated.jpg"
    photo.crop((0, 0, 300, 200)).save(jpg, exif=exif)
    png = tmp_path / "alpha.png"
    rgba_image(np.random.default_rng(1)).save(png)
    assert load_image(jpg).shape == (300, 200, 3)  # transposed: the stored image is 200 x 300
    paths = [str(jpg), str(png)]
    check_equal(preprocess_images(paths, alpha="drop"), run_hf(hf_pil, paths))


def test_beyond_max_pixels_is_resized():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    cfg = VisionPreprocessConfig(max_pixels=64 * 64 * 4)
    big = PIL.Image.fromarray(np.random.default_rng(2).integers(0, 256, (700, 1100, 3), dtype=np.uint8))
    ours = preprocess_images([big], cfg)
    check_equal(ours, run_hf(Qwen2VLImageProcessorPil(**hf_kwargs(max_pixels=cfg.max_pixels)), [big]))
    t, h, w = ours[1][0]
    assert h * w * 256 <= cfg.max_pixels
    # the real limit: a 6000 x 4000 photo is scaled to fit 12.8 M pixels
    hh, ww = smart_resize(4000, 6000)
    assert hh * ww <= 12845056 and hh % 32 == 0 and ww % 32 == 0


def test_torch_backend_matches_hf_torchvision_class(photo):
    rng = np.random.default_rng(3)
    images = [photo.crop((7, 11, 7 + 333, 11 + 517)), rgba_image(rng), photo.convert("L").crop((0, 0, 90, 70))]
    ref = run_hf_with_torchvision("image", {f"img{i}": np.asarray(im) for i, im in enumerate(images)},
                                  {"modes": [im.mode for im in images]})
    cfg = VisionPreprocessConfig(resize_backend="torch")
    check_equal(preprocess_images(images, cfg), (ref["pixel_values"], ref["grid"]))
    # the two HF backends differ by a few grey levels; ours picks the PIL one by default
    diff = np.abs(preprocess_images(images[:1])[0] - preprocess_images(images[:1], cfg)[0]).max()
    assert 0 < diff < 0.1


def test_bad_inputs_raise_one_line_errors(tmp_path, photo):
    corrupt = tmp_path / "truncated.jpg"
    buf = io.BytesIO()
    photo.save(buf, "JPEG")
    corrupt.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    for path in (corrupt, empty, text, tmp_path / "missing.jpg"):
        with pytest.raises(ImageLoadError) as e:
            preprocess_images([str(path)])
        msg = str(e.value)
        assert path.name in msg and "\n" not in msg
    with pytest.raises(ImageLoadError, match="zero-size"):
        preprocess_images([np.zeros((0, 5, 3), np.uint8)])
    with pytest.raises(ImageLoadError, match="uint8"):
        preprocess_images([np.zeros((5, 5, 3), np.float32)])
