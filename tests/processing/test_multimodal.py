"""omni_jax.processing.multimodal against HF's Qwen3OmniMoeProcessor (transformers 5.23) on the same media.

Tolerance: exact (0.0) for token ids, masks, grids, patch rows and seconds per grid (bit-exact ports of HF's PIL
image path, its torchvision video path and the placeholder expansion); 1e-4 max abs for the log-mel features (the
reference's STFT is float32 torch, ours float64; measured ~3e-5, as in tests/processing/test_audio.py). The
HF processor runs in a subprocess with torchvision stubbed in (tests/vision_helpers.py); it gets the video frames
decoded by PyAV, and for ``load_audio_from_video`` the audio track as decoded here (HF's own loader wants
torchcodec), which is checked separately against librosa's soxr_hq resampling.
"""

import numpy as np
import pytest
from multimodal_helpers import hf_processor_outputs, media, tone  # noqa: F401 (media is a fixture)

from omni_jax.config import OmniConfig
from omni_jax.processing.audio import AudioInputError
from omni_jax.processing.image import ImageLoadError
from omni_jax.processing.multimodal import (MediaInputError, MediaOptions, MultimodalProcessor, load_video_audio,
                                            resample_like_librosa)
from omni_jax.processing.video import VideoLoadError, load_video


FEATURE_TOL = 1e-4


def user(*items, text="Describe what you perceive."):
    return [{"role": "user", "content": [*items, {"type": "text", "text": text}]}]


def img(p):
    return {"type": "image", "image": str(p)}


def aud(p):
    return {"type": "audio", "audio": str(p)}


def vid(p):
    return {"type": "video", "video": str(p)}


@pytest.fixture(scope="module")
def proc(tiny_ckpt):
    return MultimodalProcessor.from_dir(tiny_ckpt, OmniConfig.from_file(tiny_ckpt))


def cases(m):
    sys_msg = {"role": "system", "content": "You are a careful assistant."}
    return {
        "image": dict(conversations=[user(img(m["img_a"]))]),
        "two_images": dict(conversations=[[sys_msg] + user(img(m["img_a"]), img(m["img_b"]), text="Compare.")]),
        "audio": dict(conversations=[user(aud(m["aud_a"]), text="What is this sound?")]),
        "audio_image": dict(conversations=[user(aud(m["aud_b"]), img(m["img_b"]))]),
        "video": dict(conversations=[user(vid(m["vid"]))], frames={str(m["vid"]): load_video(m["vid"]).frames}),
        "video_audio": dict(conversations=[user(vid(m["vid_av"]))], load_audio_from_video=True,
                            frames={str(m["vid_av"]): load_video(m["vid_av"]).frames},
                            tracks={str(m["vid_av"]): load_video_audio(m["vid_av"])}),
        # batch of 2, left padding, two audios of different lengths featurised as one padded batch
        "batch": dict(conversations=[user(aud(m["aud_a"]), img(m["img_a"])),
                                     user(img(m["img_b"]), aud(m["aud_b"]), text="Short.")]),
        # audio-in-video beside a standalone audio in another prompt of the batch
        "batch_video_audio": dict(conversations=[user(aud(m["aud_a"])), user(vid(m["vid_av"]), text="And this?")],
                                  load_audio_from_video=True,
                                  frames={str(m["vid_av"]): load_video(m["vid_av"]).frames},
                                  tracks={str(m["vid_av"]): load_video_audio(m["vid_av"])}),
    }


def unpadded(ids, mask):
    return [row[m.astype(bool)].tolist() for row, m in zip(ids, mask)]


def test_processor_matches_hf(tiny_ckpt, proc, media):
    all_cases = cases(media)
    refs = hf_processor_outputs(tiny_ckpt, list(all_cases.values()))
    worst = {}
    for (name, case), ref in zip(all_cases.items(), refs):
        ours = proc(case["conversations"], use_audio_in_video=case.get("load_audio_from_video", False))
        assert unpadded(ours.input_ids, ours.attention_mask) == unpadded(ref["input_ids"], ref["attention_mask"]), name
        assert ours.input_ids.shape[1] % 32 == 0 and (ours.attention_mask[:, -1] == 1).all(), name  # left padded
        for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "input_features",
                    "feature_attention_mask", "video_second_per_grid"):
            mine = getattr(ours, key)
            assert (mine is None) == (key not in ref), (name, key)
            if mine is not None:
                assert mine.shape == ref[key].shape, (name, key)
                if key == "input_features":  # float64 STFT here, float32 torch there (tests/processing/test_audio.py)
                    worst[name] = float(np.abs(mine - ref[key]).max())
                    assert worst[name] <= FEATURE_TOL, (name, worst[name])
                else:
                    np.testing.assert_array_equal(mine, ref[key].astype(mine.dtype), err_msg=f"{name} {key}")
    print("max |features - HF|:", worst)
    # the audio-in-video prompt really interleaves (video pads, then audio pads, then video pads again)
    b = proc(all_cases["video_audio"]["conversations"], use_audio_in_video=True)
    kinds = [t for t in b.input_ids[0][b.attention_mask[0] == 1] if t in (151656, 151675)]
    changes = int(np.sum(np.diff(np.asarray(kinds) == 151656) != 0))
    assert changes >= 2, changes


def test_video_audio_track_like_librosa(media):
    """The track is decoded at its native rate (44.1 kHz stereo s16), channel-averaged, resampled with soxr_hq."""
    import librosa

    pcm = (np.clip(tone(2.0, 44100, seed=3, channels=2), -1, 1) * 32767).astype(np.int16)
    native = (pcm.astype(np.float32) / 32768.0).mean(axis=1)
    expected = librosa.resample(native, orig_sr=44100, target_sr=16000, res_type="soxr_hq")
    got = load_video_audio(media["vid_av"])
    assert got.shape == expected.shape == (32000,)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_array_equal(resample_like_librosa(native, 44100), got)


def test_positions_and_knobs(proc, media):
    b = proc(user(vid(media["vid_av"])), use_audio_in_video=True)
    assert b.position_ids.shape == (3,) + b.input_ids.shape and b.rope_deltas.shape == (1,)
    # memory knobs: fewer pixels per image, sampled video frames with matching seconds per grid
    small = proc(user(img(media["img_a"])), MediaOptions(image_max_pixels=32 * 32 * 4))
    assert int(np.prod(small.image_grid_thw[0])) <= 16
    sampled = proc(user(vid(media["vid"])), MediaOptions(video_fps=1.0, video_max_pixels=128 * 32 * 32))
    assert sampled.video_grid_thw[0, 0] == 2 and sampled.video_second_per_grid[0] == 2.0  # 4 frames @2fps -> 2 s
    halved = proc(user(vid(media["vid"])), MediaOptions(video_fps=2.0))
    assert halved.video_second_per_grid[0] == 1.0
    capped = proc(user(vid(media["vid"])), MediaOptions(video_max_frames=2))  # 4 frames -> 2 (one temporal grid)
    assert capped.video_grid_thw[0, 0] == 1 and capped.video_second_per_grid[0] == 2.0


def one_line(err):
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_bad_media_raise_one_line_errors(proc, media, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageLoadError) as e:
        proc(user(img(junk)))
    assert str(junk) in one_line(e)
    bad_wav = tmp_path / "bad.wav"
    bad_wav.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(AudioInputError) as e:
        proc(user(aud(bad_wav)))
    assert str(bad_wav) in one_line(e)
    bad_vid = tmp_path / "bad.mkv"
    bad_vid.write_bytes(b"\x1aE\xdf\xa3 definitely not a video")
    for flag in (False, True):
        with pytest.raises(VideoLoadError) as e:
            proc(user(vid(bad_vid)), use_audio_in_video=flag)
        assert str(bad_vid) in one_line(e)
    with pytest.raises(MediaInputError) as e:
        proc(user(vid(media["vid"])), use_audio_in_video=True)
    assert str(media["vid"]) in one_line(e) and "no audio track" in str(e.value)
    with pytest.raises(ImageLoadError) as e:
        proc(user(img(tmp_path / "missing.png")))
    assert "missing.png" in one_line(e)
    with pytest.raises(MediaInputError):
        proc(user({"type": "image", "image": "https://example.com/cat.png"}))
