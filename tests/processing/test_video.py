"""omni_jax.processing.video against HF's Qwen2VLVideoProcessor (transformers 5.23) on the same frames.

HF's video processor imports torchvision, which is run in a subprocess (tests/vision_helpers.py). Tolerance:
exact (0.0 max abs) — our numpy port of torch's uint8 antialiased bicubic reproduces it bit for bit.
"""

import numpy as np
import pytest
from vision_helpers import run_hf_batch_with_torchvision, write_video

from omni_jax.processing.video import (VideoLoadError, VideoPreprocessConfig, load_video, preprocess_videos,
                                       sample_frame_indices)


def moving_frames(t, h, w, seed=0):
    """A textured pattern that moves between frames (so a decoded video is recognisably the same)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w + 4 * t, 3), dtype=np.uint8)
    base = np.repeat(np.repeat(base[::4, ::4], 4, 0), 4, 1)[:h]
    return np.stack([base[:, 4 * i: 4 * i + w] for i in range(t)])


def video_job(videos):
    return ("video", {f"video{i}": v for i, v in enumerate(videos)}, {"n": len(videos)})


SAMPLE_CASES = [dict(total=30, video_fps=10.0, fps=2.0), dict(total=7, video_fps=30.0, fps=1.0),
                dict(total=100, video_fps=24.0, fps=2.0), dict(total=13, num_frames=5), dict(total=9, num_frames=8),
                dict(total=2000, video_fps=25.0, fps=2.0), dict(total=11, video_fps=3.0, fps=0.7)]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """All test videos, and HF's outputs for them computed in one torchvision subprocess."""
    tmp = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    m = {"lists": [moving_frames(3, 50, 70), rng.integers(0, 256, (4, 37, 61), dtype=np.uint8)[..., None],
                   rng.integers(0, 256, (2, 900, 1000, 3), dtype=np.uint8)]}
    m["clip_frames"] = moving_frames(5, 64, 96, seed=1)
    m["clip"] = write_video(tmp / "clip.mp4", m["clip_frames"], fps=4)
    m["clip_decoded"] = load_video(m["clip"])
    m["sampled_clip"] = write_video(tmp / "sampled.mp4", moving_frames(9, 40, 60, seed=2), fps=6)
    m["sample_idx"] = sample_frame_indices(9, 6.0, 2.0)
    m["sampled_frames"] = load_video(m["sampled_clip"]).frames[m["sample_idx"]]
    refs = run_hf_batch_with_torchvision([
        video_job(m["lists"]), video_job([m["clip_decoded"].frames]), video_job([m["sampled_frames"]]),
        ("sample", {}, {"cases": SAMPLE_CASES})])
    m["ref_lists"], m["ref_clip"], m["ref_sampled"], m["ref_sample_idx"] = [
        (r["pixel_values"], r["grid"]) if "grid" in r else r for r in refs]
    m["tmp"] = tmp
    return m


def check_equal(ours, ref):
    np.testing.assert_array_equal(ours[1], ref[1])
    assert ours[0].dtype == np.float32 and ours[0].shape == ref[0].shape
    assert np.abs(ours[0] - ref[0]).max() == 0.0


def test_frame_lists_match_hf(media):
    """Odd sizes, an odd frame count (padded by repeating the last frame), a grey video, an over-size video."""
    ours = preprocess_videos(media["lists"])
    check_equal(ours[:2], media["ref_lists"])
    grids = ours[1].tolist()
    assert grids[0][0] == 2 and grids[1][0] == 2 and grids[2][0] == 1
    assert grids[2][1] * grids[2][2] * 256 <= 768 * 32 * 32  # per-frame max pixels enforced
    assert ours[2] == [2.0, 2.0, 2.0]  # HF: fps defaults to 1.0 -> 2 s per temporal grid


def test_video_file_and_frame_folder(media, tmp_path):
    import PIL.Image

    frames, path, decoded = media["clip_frames"], media["clip"], media["clip_decoded"]
    assert decoded.frames.shape == (5, 64, 96, 3) and decoded.frames.dtype == np.uint8 and decoded.fps == 4.0
    assert np.abs(decoded.frames.astype(int) - frames).mean() < 12  # lossy codec, same pictures
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(decoded.frames):
        PIL.Image.fromarray(f).save(folder / f"{i:03d}.png")
    ours_file = preprocess_videos([str(path)], fps=2.0)
    ours_folder = preprocess_videos([folder], fps=2.0)
    check_equal(ours_file[:2], ours_folder[:2])
    check_equal(ours_file[:2], media["ref_clip"])
    assert ours_file[2] == [1.0]


def test_frame_sampling_matches_hf(media):
    ref = media["ref_sample_idx"]
    for i, c in enumerate(SAMPLE_CASES):
        ours = sample_frame_indices(c["total"], c.get("video_fps"), c.get("fps"), c.get("num_frames"))
        np.testing.assert_array_equal(ours, ref[f"case{i}"], err_msg=str(c))


def test_sampled_video_matches_hf_on_sampled_frames(media):
    ours = preprocess_videos([media["sampled_clip"]], sample_fps=2.0)
    check_equal(ours[:2], media["ref_sampled"])
    assert ours[1][0][0] == len(media["sample_idx"]) // 2


def test_cap_pixels_per_frame_option():
    cfg = VideoPreprocessConfig(cap_pixels_per_frame=True, max_video_tokens=2000)
    big = np.zeros((8, 600, 800, 3), np.uint8)
    _, grid, _ = preprocess_videos([big], cfg)
    budget = max(min(768 * 32 * 32, int(2000 * 32 * 32 * 0.9) * 2 // 8), int(128 * 32 * 32 * 1.05))
    assert grid[0][1] * grid[0][2] * 256 <= budget


def test_bad_videos_raise_one_line_errors(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    folder = tmp_path / "no_frames"
    folder.mkdir()
    for bad in (text, empty, tmp_path / "missing.mp4", folder):
        with pytest.raises(VideoLoadError) as e:
            preprocess_videos([bad])
        assert bad.name in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(VideoLoadError, match="differ in size"):
        preprocess_videos([[np.zeros((4, 4, 3), np.uint8), np.zeros((4, 6, 3), np.uint8)]])
