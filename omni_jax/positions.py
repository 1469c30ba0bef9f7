"""TM-RoPE position ids: a host-side (numpy) equivalent of the Thinker's HF ``get_rope_index``.

Runs before jit: it walks each prompt's token ids once, so the returned arrays have static shapes ``[3, B, L]``
and can be fed to a jitted prefill.

Rules (exactly those of ``Qwen3OmniMoePreTrainedModelForConditionalGeneration.get_rope_index`` in
transformers 5.23, including its float32 arithmetic, so results are bit-identical):
- No image or video grid at all (text, or text + audio): ``pos = cumsum(mask) - 1`` on all three rows,
  padding positions set to 1, ``delta = max(pos) + 1 - sum(mask)``.
- Otherwise, per sample, over the unpadded tokens only (padding positions stay 0), left to right: text runs
  are sequential; each multimodal item gets a start marker (1 position, 2 for audio-in-video), then its body
  starting at ``st`` = (max of the last appended piece) + 1 (as HF does: not the running global max):
  audio ``st + arange(n)`` on all rows; image ``(t, h, w) = (st, st + row, st + col)`` over the merged
  (h/2, w/2) grid; video the same with ``t = st + t_idx * second_per_grid * position_id_per_seconds``
  (fractional); audio-in-video the video and audio bodies both start at ``st`` and are merged by the t row
  (video first on ties). Then an end marker, and trailing text.
  ``delta = max(positions) + 1 - n_unpadded``.
- Decoding (no multimodal tokens after the prompt): the new token's position is ``n_real + delta`` on all
  three rows, ``n_real`` = non-padding tokens already in the cache (``decode_position_ids``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from omni_jax.errors import UsageError

F32 = np.float32


class PositionIdError(UsageError):
    """Token ids and media metadata that do not describe a valid prompt."""


@dataclass(frozen=True)
class RopeIndexConfig:
    """The token ids and constants ``get_rope_index`` needs (real-model defaults)."""

    image_token_id: int = 151655
    video_token_id: int = 151656
    audio_token_id: int = 151675
    vision_start_token_id: int = 151652
    audio_start_token_id: int = 151669
    spatial_merge_size: int = 2
    position_id_per_seconds: float = 13
    n_window: int = 50

    @classmethod
    def from_thinker(cls, thinker_cfg) -> "RopeIndexConfig":
        """Build from ``omni_jax.config.ThinkerConfig``."""
        return cls(
            image_token_id=thinker_cfg.image_token_id,
            video_token_id=thinker_cfg.video_token_id,
            audio_token_id=thinker_cfg.audio_token_id,
            vision_start_token_id=thinker_cfg.vision_start_token_id,
            audio_start_token_id=thinker_cfg.audio_start_token_id,
            spatial_merge_size=thinker_cfg.vision.spatial_merge_size,
            position_id_per_seconds=thinker_cfg.position_id_per_seconds,
            n_window=thinker_cfg.audio.n_window,
        )


def audio_output_lengths(mel_frames, n_window: int = 50):
    """Tokens the audio encoder produces for ``mel_frames`` log-mel frames (HF ``_get_feat_extract_output_lengths``).

    Every full chunk of ``2 * n_window`` frames gives 13 tokens (hard-coded in the reference, right only for
    ``n_window = 50``); the remainder goes through three stride-2 convolutions.
    """
    frames = np.asarray(mel_frames, dtype=np.int64)
    chunk = n_window * 2
    leave = frames % chunk
    feat = (leave - 1) // 2 + 1
    out = ((feat - 1) // 2 + 1 - 1) // 2 + 1 + (frames // chunk) * 13
    return int(out) if out.ndim == 0 else out


def _seq(n: int, start) -> np.ndarray:
    """[3, n] float32: ``arange(n) + start`` on every row."""
    return np.broadcast_to(np.arange(n, dtype=F32) + F32(start), (3, n)).astype(F32)


def _vision_block(start, grid_thw: Sequence[int], merge: int, t_index: np.ndarray) -> np.ndarray:
    """[3, t*h'*w'] float32 positions of one image/video body, tokens in (t, row, col) raster order."""
    t, h, w = (int(v) for v in grid_thw)
    gh, gw = h // merge, w // merge
    t_index = np.asarray(t_index, dtype=F32)
    tt = np.repeat(t_index, gh * gw)
    hh = np.tile(np.repeat(np.arange(gh, dtype=F32), gw), t)
    ww = np.tile(np.arange(gw, dtype=F32), t * gh)
    return np.stack([tt, hh, ww]).astype(F32) + F32(start)


def _interleave_by_time(video: np.ndarray, audio: np.ndarray) -> list[np.ndarray]:
    """Merge two position blocks by their t row, the video token first on ties (audio-in-video)."""
    pieces, vi, ai = [], 0, 0
    nv, na = video.shape[1], audio.shape[1]
    while vi < nv and ai < na:
        if video[0, vi] <= audio[0, ai]:
            pieces.append(video[:, vi: vi + 1])
            vi += 1
        else:
            pieces.append(audio[:, ai: ai + 1])
            ai += 1
    if vi < nv:
        pieces.append(video[:, vi:])
    if ai < na:
        pieces.append(audio[:, ai:])
    return pieces


def _index_or_end(tokens: list[int], value: int, start: int) -> int:
    try:
        return tokens.index(value, start)
    except ValueError:
        raise PositionIdError(f"expected token {value} after index {start} (a media item without its start marker)") from None


class _Counters:
    def __init__(self):
        self.image = self.video = self.audio = 0


def _sample_positions(tokens: list[int], cfg: RopeIndexConfig, image_grid_thw, video_grid_thw, audio_seqlens,
                      second_per_grids, use_audio_in_video: bool, c: _Counters) -> np.ndarray:
    ids = np.asarray(tokens, dtype=np.int64)
    vs = np.flatnonzero(ids == cfg.vision_start_token_id)
    after = ids[np.minimum(vs + 1, len(ids) - 1)] if len(vs) else np.zeros(0, np.int64)
    audio_nums = int(np.sum(ids == cfg.audio_start_token_id))
    image_nums = int(np.sum(after == cfg.image_token_id))
    video_nums = int(np.sum(after == (cfg.audio_start_token_id if use_audio_in_video else cfg.video_token_id)))
    n_items = image_nums + audio_nums if use_audio_in_video else image_nums + video_nums + audio_nums
    remain_img, remain_vid, remain_aud = image_nums, video_nums, audio_nums
    has_vision = cfg.image_token_id in tokens or cfg.video_token_id in tokens
    has_audio = cfg.audio_token_id in tokens
    merge = cfg.spatial_merge_size
    pieces: list[np.ndarray] = []
    st = 0

    def last_max_plus_one():
        return pieces[-1].max() + F32(1) if pieces else F32(0)

    for _ in range(n_items):
        st_idx = last_max_plus_one()
        ed_vision = (_index_or_end(tokens, cfg.vision_start_token_id, st)
                     if has_vision and (remain_vid > 0 or remain_img > 0) else len(tokens) + 1)
        ed_audio = (_index_or_end(tokens, cfg.audio_start_token_id, st)
                    if has_audio and remain_aud > 0 else len(tokens) + 1)
        min_ed = min(ed_vision, ed_audio)
        text_len = min_ed - st
        if text_len:
            pieces.append(_seq(text_len, st_idx))
            st_idx = st_idx + F32(text_len)
        audio_in_video = min_ed == ed_vision and ed_vision + 1 == ed_audio
        bos = eos = 2 if audio_in_video else 1
        pieces.append(_seq(bos, st_idx))
        st_idx = st_idx + F32(bos)
        if min_ed == ed_audio:
            n = audio_output_lengths(_item(audio_seqlens, c.audio, "audio_seqlens"), cfg.n_window)
            pieces.append(_seq(n, st_idx))
            st += text_len + bos + n + eos
            c.audio += 1
            remain_aud -= 1
        elif min_ed == ed_vision and tokens[ed_vision + 1] == cfg.image_token_id:
            grid = _item(image_grid_thw, c.image, "image_grid_thw")
            t_index = np.arange(int(grid[0]), dtype=F32) * F32(cfg.position_id_per_seconds)
            pieces.append(_vision_block(st_idx, grid, merge, t_index))
            st += text_len + bos + int(np.prod(grid)) // merge**2 + eos
            c.image += 1
            remain_img -= 1
        elif min_ed == ed_vision and tokens[ed_vision + 1] == cfg.video_token_id:
            grid = _item(video_grid_thw, c.video, "video_grid_thw")
            t_index = _video_t_index(int(grid[0]), second_per_grids, c.video, cfg)
            pieces.append(_vision_block(st_idx, grid, merge, t_index))
            st += text_len + bos + int(np.prod(grid)) // merge**2 + eos
            c.video += 1
            remain_vid -= 1
        elif audio_in_video:
            n = audio_output_lengths(_item(audio_seqlens, c.audio, "audio_seqlens"), cfg.n_window)
            audio_block = _seq(n, st_idx)
            grid = _item(video_grid_thw, c.video, "video_grid_thw")
            t_index = _video_t_index(int(grid[0]), second_per_grids, c.video, cfg)
            video_block = _vision_block(st_idx, grid, merge, t_index)
            pieces.extend(_interleave_by_time(video_block, audio_block))
            st += text_len + bos + n + int(np.prod(grid)) // merge**2 + eos
            c.audio += 1
            c.video += 1
            remain_vid -= 1
            remain_aud -= 1
        else:
            raise PositionIdError(f"token after <|vision_start|> at {ed_vision} is not an image, video or audio marker")
        pieces.append(_seq(eos, last_max_plus_one()))
    if st < len(tokens):
        pieces.append(_seq(len(tokens) - st, last_max_plus_one()))
    return np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), F32)


def _video_t_index(grid_t: int, second_per_grids, idx: int, cfg: RopeIndexConfig) -> np.ndarray:
    """``(arange(t) * second_per_grid) * position_id_per_seconds`` in float32, in the reference's order."""
    if second_per_grids is None:
        raise PositionIdError("a video needs second_per_grids (video_second_per_grid from the processor)")
    spg = np.asarray(second_per_grids, dtype=np.float64).reshape(-1)
    if idx >= len(spg):
        raise PositionIdError(f"the prompt has more videos than second_per_grids has entries ({len(spg)})")
    return (np.arange(grid_t, dtype=F32) * F32(spg[idx])) * F32(cfg.position_id_per_seconds)


def _item(seq, idx: int, name: str):
    if seq is None:
        raise PositionIdError(f"the prompt has a media item but {name} is None")
    arr = np.asarray(seq)
    if idx >= len(arr):
        raise PositionIdError(f"the prompt has more media items than {name} has entries ({len(arr)})")
    return arr[idx]


def get_rope_index(input_ids, attention_mask=None, image_grid_thw=None, video_grid_thw=None,
                   audio_seqlens=None, second_per_grids=None, use_audio_in_video: bool = False,
                   cfg: RopeIndexConfig = RopeIndexConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Position ids ``[3, B, L]`` (float32) and rope deltas ``[B, 1]`` (float32) for a left-padded batch.

    ``audio_seqlens`` are mel-frame counts per audio (``feature_attention_mask.sum(-1)``), consumed in batch
    order like images (``image_grid_thw``) and videos (``video_grid_thw``, ``second_per_grids``).
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim != 2:
        raise PositionIdError(f"input_ids must be [B, L], got shape {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask).astype(np.int64)
    if mask.shape != ids.shape:
        raise PositionIdError(f"attention_mask shape {mask.shape} differs from input_ids shape {ids.shape}")
    if image_grid_thw is None and video_grid_thw is None:
        pos = np.array(text_positions(mask)[0])
        pos[mask == 0] = 1
        pos3 = np.broadcast_to(pos, (3,) + pos.shape).astype(F32)
        deltas = (pos.max(-1, keepdims=True) + F32(1) - mask.sum(-1, keepdims=True)).astype(F32)
        return pos3, deltas
    out = np.zeros((3,) + ids.shape, dtype=F32)
    deltas = np.zeros((ids.shape[0], 1), dtype=F32)
    c = _Counters()
    for b in range(ids.shape[0]):
        keep = mask[b] == 1
        tokens = ids[b][keep].tolist()
        pos = _sample_positions(tokens, cfg, image_grid_thw, video_grid_thw, audio_seqlens, second_per_grids,
                                use_audio_in_video, c)
        out[:, b, keep] = pos
        deltas[b, 0] = (pos.max() + F32(1) - F32(len(tokens))) if pos.size else F32(0)
    return out, deltas


def text_positions(attention_mask):
    """Text position ids ``[3, B, L]`` float32: 0, 1, 2, ... over each row's real tokens (padding 0, left or right).

    ``attention_mask`` [B, L] (1 = real token) is a numpy or a JAX array; under ``jit`` it may be traced (only
    array methods are used, so a numpy mask stays on the host and a traced one stays in the graph)."""
    pos = (attention_mask.astype("int32").cumsum(-1) - 1).clip(0).astype("float32")
    return pos[None].repeat(3, axis=0)


def decode_position_ids(tokens_in_cache, rope_deltas) -> np.ndarray:
    """Position ids ``[3, B, 1]`` for the next decoded token: ``tokens_in_cache + delta`` on all three rows.

    ``tokens_in_cache`` counts the *real* (non-padding) tokens already in the KV cache per sample (scalar or
    ``[B]``): with left padding that is ``attention_mask.sum(-1)``, as in HF's ``compute_3d_position_ids``
    (``cumsum(mask) - 1 + delta``) and its generate loop (``last + 1``); without padding it is the cache length.
    """
    deltas = np.asarray(rope_deltas, dtype=F32).reshape(-1)
    pos = np.asarray(tokens_in_cache, dtype=F32) + deltas
    return np.broadcast_to(pos[None, :, None], (3, deltas.shape[0], 1)).astype(F32)
