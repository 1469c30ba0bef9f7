"""omni_jax.positions against HF's Thinker get_rope_index (transformers 5.23), exact equality.

HF's method is called unbound on a stand-in ``self`` carrying the tiny thinker config (the method reads only
``self.config``, ``self.spatial_merge_size`` and ``self.get_llm_pos_ids_for_vision``), so this is the real
reference code path without building the model.
"""

import types

import numpy as np
import pytest
import torch

from hf_fixtures import hf_config, tiny_config_dict
from omni_jax.config import OmniConfig
from omni_jax.positions import (PositionIdError, RopeIndexConfig, audio_output_lengths, decode_position_ids,
                                get_rope_index)

VS, VE, AS, AE = 151652, 151653, 151669, 151670
IMG, VID, AUD = 151655, 151656, 151675
PAD = 151643


@pytest.fixture(scope="module")
def hf_rope():
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
        Qwen3OmniMoePreTrainedModelForConditionalGeneration as Base,
    )

    thinker_cfg = hf_config(tiny_config_dict()).thinker_config
    fake = types.SimpleNamespace(config=thinker_cfg, spatial_merge_size=thinker_cfg.vision_config.spatial_merge_size)
    fake.get_llm_pos_ids_for_vision = types.MethodType(Base.get_llm_pos_ids_for_vision, fake)

    def call(**kw):
        kw = {k: (torch.as_tensor(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        pos, delta = Base.get_rope_index(fake, **kw)
        return pos.numpy(), delta.numpy()

    return call


@pytest.fixture(scope="module")
def cfg():
    return RopeIndexConfig.from_thinker(OmniConfig.from_hf(tiny_config_dict()).thinker)


def text(n, seed):
    return list(np.random.default_rng(seed).integers(100, 5000, n))


def image(grid):
    return [VS] + [IMG] * (int(np.prod(grid)) // 4) + [VE]


def video(grid):
    return [VS] + [VID] * (int(np.prod(grid)) // 4) + [VE]


def audio(mel_frames):
    return [AS] + [AUD] * audio_output_lengths(mel_frames) + [AE]


def audio_in_video(grid, mel_frames, spg, pps=13):
    """The processor's placeholder: video grids placed at their start times among the audio tokens."""
    t, h, w = grid
    v_idx = np.repeat(np.arange(t), (h // 2) * (w // 2)) * spg * pps
    a_idx = np.arange(audio_output_lengths(mel_frames))
    out, vi, ai = [], 0, 0
    while vi < len(v_idx) and ai < len(a_idx):
        if v_idx[vi] <= a_idx[ai]:
            out.append(VID)
            vi += 1
        else:
            out.append(AUD)
            ai += 1
    out += [VID] * (len(v_idx) - vi) + [AUD] * (len(a_idx) - ai)
    return [VS, AS] + out + [AE, VE]


def left_pad(rows):
    L = max(map(len, rows))
    ids = np.array([[PAD] * (L - len(r)) + r for r in rows], dtype=np.int64)
    mask = np.array([[0] * (L - len(r)) + [1] * len(r) for r in rows], dtype=np.int64)
    return ids, mask


def check(ours, ref):
    pos, delta = ours
    rpos, rdelta = ref
    assert pos.dtype == np.float32 and pos.shape == rpos.shape
    np.testing.assert_array_equal(pos, rpos)
    np.testing.assert_array_equal(delta.reshape(-1), rdelta.reshape(-1).astype(np.float32))


def test_audio_output_lengths_matches_hf():
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    frames = np.array([1, 2, 7, 99, 100, 101, 199, 200, 250, 3000, 30000])
    ref = _get_feat_extract_output_lengths(torch.as_tensor(frames)).numpy()
    np.testing.assert_array_equal(audio_output_lengths(frames), ref)
    assert audio_output_lengths(100) == 13


def test_text_only_left_padding(hf_rope, cfg):
    ids, mask = left_pad([text(9, 0), text(5, 1), text(12, 2)])
    ours = get_rope_index(ids, mask, cfg=cfg)
    check(ours, hf_rope(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)))
    assert ours[0][0, 1, 0] == 1  # padding positions are 1 on the text path


def test_two_images_of_different_grids(hf_rope, cfg):
    grids = np.array([[1, 4, 6], [1, 6, 2]])
    ids, mask = left_pad([text(3, 0) + image(grids[0]) + text(2, 1) + image(grids[1]) + text(4, 2)])
    check(get_rope_index(ids, mask, image_grid_thw=grids, cfg=cfg),
          hf_rope(input_ids=ids, attention_mask=ids * 0 + 1, image_grid_thw=torch.as_tensor(grids)))


@pytest.mark.parametrize("spg", [0.5, 1.0, 2.0 / 3.0])
def test_video_fractional_time(hf_rope, cfg, spg):
    grids = np.array([[3, 4, 6]])
    ids, mask = left_pad([text(3, 0) + video(grids[0]) + text(3, 1)])
    ours = get_rope_index(ids, mask, video_grid_thw=grids, second_per_grids=[spg], cfg=cfg)
    check(ours, hf_rope(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                        video_grid_thw=torch.as_tensor(grids), second_per_grids=torch.tensor([spg])))
    if spg == 0.5:
        assert 4 + 6.5 in ours[0][0, 0].tolist()  # 3 text + <|vision_start|>, then t step 0.5 s * 13 = 6.5


def test_audio_only_takes_text_path(hf_rope, cfg):
    ids, mask = left_pad([text(2, 0) + audio(230) + text(3, 1), text(4, 2) + audio(100)])
    check(get_rope_index(ids, mask, audio_seqlens=[230, 100], cfg=cfg),
          hf_rope(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                  audio_seqlens=torch.tensor([230, 100])))


def test_image_and_audio_batch_left_padding(hf_rope, cfg):
    grids = np.array([[1, 4, 4], [1, 2, 6]])
    rows = [text(3, 0) + image(grids[0]) + text(2, 1) + audio(150) + text(2, 2),
            text(1, 3) + audio(99) + image(grids[1]) + text(5, 4)]
    ids, mask = left_pad(rows)
    seqlens = [150, 99]
    ours = get_rope_index(ids, mask, image_grid_thw=grids, audio_seqlens=seqlens, cfg=cfg)
    check(ours, hf_rope(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                        image_grid_thw=torch.as_tensor(grids), audio_seqlens=torch.tensor(seqlens)))
    assert (ours[0][:, 1, : ids.shape[1] - len(rows[1])] == 0).all()  # multimodal path: padding stays 0


def test_audio_in_video(hf_rope, cfg):
    grids = np.array([[3, 4, 6]])
    spg, mel = 1.0, 460
    rows = [text(4, 0) + audio_in_video(grids[0], mel, spg) + text(3, 1), text(2, 2) + audio(120) + text(1, 3)]
    ids, mask = left_pad(rows)
    kw = dict(video_grid_thw=grids, audio_seqlens=[mel, 120], second_per_grids=[spg])
    ours = get_rope_index(ids, mask, use_audio_in_video=True, cfg=cfg, **kw)
    ref = hf_rope(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), use_audio_in_video=True,
                  video_grid_thw=torch.as_tensor(grids), audio_seqlens=torch.tensor(kw["audio_seqlens"]),
                  second_per_grids=torch.tensor([spg]))
    check(ours, ref)


def test_decode_rule(cfg):
    grids = np.array([[1, 4, 4]])
    ids, mask = left_pad([text(2, 0) + image(grids[0]) + text(2, 1), text(3, 2)])
    pos, delta = get_rope_index(ids, mask, image_grid_thw=grids, cfg=cfg)
    nxt = decode_position_ids(mask.sum(-1), delta)
    assert nxt.shape == (3, 2, 1)
    # row 0 has no padding: the next position follows the last prompt position
    assert nxt[0, 0, 0] == pos[0, 0, -1] + 1
    # the left-padded text-only sample continues its own sequence
    assert nxt[0, 1, 0] == pos[0, 1, -1] + 1
    # and a second decode step moves every row by one
    np.testing.assert_array_equal(decode_position_ids(mask.sum(-1) + 1, delta), nxt + 1)


def test_bad_input(cfg):
    ids = np.array([text(2, 0) + image([1, 4, 4])])
    with pytest.raises(PositionIdError):
        get_rope_index(ids, image_grid_thw=None, video_grid_thw=np.zeros((0, 3)), cfg=cfg)
    with pytest.raises(PositionIdError, match="shape"):
        get_rope_index(ids, np.ones((1, 3)), cfg=cfg)
