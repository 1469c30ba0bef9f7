"""The Thinker's multimodal front: run the encoders on a batch's media and merge them into the prompt embeddings.

HF ``Qwen3OmniMoeThinkerModel.forward``, as pure functions over the Thinker's parameter dict
(``pure_params(model.thinker)`` = ``{"text", "visual", "audio"}``):

1. ``E = embed_tokens(input_ids)``;
2. audio: one encoder call over every audio of the batch (features padded to ``bucket_frames`` so the jitted
   encoder compiles per few sizes), the packed ``(sum tokens, H)`` rows go to the ``<|audio_pad|>`` positions in
   flattened batch-major order (HF's ``masked_scatter``);
3. images: one vision forward over all images' patches, rows to the ``<|image_pad|>`` positions; videos likewise
   (a separate forward, as HF does);
4. deepstack: a ``[n_levels, B, P, H]`` array, zero except at visual positions, where level ``l`` holds the
   image or video deepstack feature of that token (images and videos interleaved by position, as HF's
   ``embed_joint``); ``ThinkerEngine`` adds level ``l`` after decoder layer ``l`` during the prefill only.

The merge is one jitted gather: the host computes, for every prompt position, the row of the media table
(audio ‖ image ‖ video embeddings, padded to a bucket) it takes, or -1 for a text token.

    batch = MultimodalProcessor.from_dir(ckpt, cfg)(conversations)        # omni_jax.processing.multimodal
    prompt = prepare_prompt(pure_params(model.thinker), cfg, batch)        # -> PreparedPrompt
    ThinkerEngine(cfg, pure_params(model.thinker.text)).generate(prompt, ...)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.config import AudioConfig, OmniConfig, VisionConfig
from omni_jax.errors import UsageError
from omni_jax.executables import program
from omni_jax.models import audio_encoder, thinker_text
from omni_jax.models.prompt import PreparedPrompt, round_up
from omni_jax.models.vision import normalize_grids, vision_forward

MEDIA_ROW_BUCKET = 256  # media rows are padded to a multiple of this so the merge compiles rarely


class PlaceholderMismatchError(UsageError):
    """The prompt's placeholder tokens do not match the number of encoder outputs."""


# ------------------------------------------------------------------------------------------ encoders
def encode_vision(visual_params: dict, pixel_values, grid_thw, cfg: VisionConfig, dtype=jnp.float32):
    """Patch rows of several images (or videos) -> (embeds [tokens, out], tuple of n_levels deepstack [tokens, out])."""
    embeds, deepstack = vision_forward(visual_params, np.asarray(pixel_values), normalize_grids(grid_thw), cfg,
                                       dtype=jnp.dtype(dtype))
    return embeds, tuple(deepstack)


def encode_audio(audio_params: dict, input_features, feature_attention_mask, cfg: AudioConfig, dtype=jnp.float32):
    """Padded log-mel batch (A, mel, T) + frame mask (A, T) -> packed embeddings (sum tokens, out), HF's order."""
    out, _, counts = _encode_audio_unpacked(audio_params, input_features, feature_attention_mask, cfg, dtype)
    return audio_encoder.pack_audio_embeddings(out, counts)


def _encode_audio_unpacked(audio_params, input_features, feature_attention_mask, cfg: AudioConfig, dtype):
    """(encoder output [A, N, out], the row of ``output.reshape(-1, out)`` of every packed token (host), token
    counts per audio): the packing is left to the merge's gather, so it costs no program of its own."""
    features = np.asarray(input_features, np.float32)
    frames = np.asarray(feature_attention_mask).sum(-1).astype(np.int64)
    t = features.shape[-1]
    padded = np.pad(features, ((0, 0), (0, 0), (0, audio_encoder.bucket_frames(t, cfg) - t)))
    out = audio_encoder.encode(audio_params, padded, frames.astype(np.int32), cfg=cfg, dtype=jnp.dtype(dtype))
    counts = np.asarray(audio_encoder.audio_token_counts(frames, cfg), np.int64)
    n = out.shape[1]
    rows = np.concatenate([i * n + np.arange(c) for i, c in enumerate(counts)]).astype(np.int32)
    return out, rows, counts


# ------------------------------------------------------------------------------------------ merge
def media_layout(input_ids: np.ndarray, cfg: OmniConfig, n_audio: int, n_image: int, n_video: int):
    """Host-side gather indices: (media_row [B, P], deepstack_row [B, P]), -1 where the token is text.

    Media table rows: audio tokens, then image tokens, then video tokens; deepstack rows: image, then video.
    Placeholders of each kind take rows in flattened batch-major order.
    """
    t = cfg.thinker
    flat = np.asarray(input_ids).reshape(-1)
    media = np.full(flat.shape, -1, np.int32)
    deep = np.full(flat.shape, -1, np.int32)
    offset = 0
    for name, token, n in (("audio", t.audio_token_id, n_audio), ("image", t.image_token_id, n_image),
                           ("video", t.video_token_id, n_video)):
        where = np.flatnonzero(flat == token)
        if len(where) != n:
            raise PlaceholderMismatchError(f"{name} features and {name} tokens do not match: {len(where)} "
                                           f"placeholder tokens, {n} encoder outputs")
        media[where] = offset + np.arange(n)
        offset += n
        if name != "audio":
            deep[where] = offset - n - n_audio + np.arange(n)
    shape = np.asarray(input_ids).shape
    return media.reshape(shape), deep.reshape(shape)


def _concat_rows(pieces, axis: int, dtype, total: int):
    """Concatenate along ``axis`` and zero-pad that axis to ``total`` rows (inside jit: static shapes)."""
    x = jnp.concatenate([p.astype(dtype) for p in pieces], axis=axis)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, total - x.shape[axis])
    return jnp.pad(x, widths)


@program(static_argnames=("dtype",))
def merge_embeddings(embed_table, input_ids, media_pieces, media_row, deepstack_pieces=(), deepstack_row=None,
                     dtype=jnp.float32):
    """Token embeddings with media rows spliced in, and the deepstack payload.

    media_pieces: tuple of [..., H] (audio, image, video embeddings, in that order; each flattened to rows);
    media_row [B, P]: row of their concatenation for each position or -1 (text). deepstack_pieces: (image, video) tuples of L levels [m_i, H];
    deepstack_row [B, P]. Returns (inputs_embeds [B, P, H], deepstack [L, B, P, H] or None: zeros off visual tokens).
    """
    tokens = jnp.take(embed_table, input_ids, axis=0).astype(dtype)
    x = tokens
    if media_pieces:
        media_pieces = [p.reshape(-1, p.shape[-1]) for p in media_pieces]
        n = sum(p.shape[0] for p in media_pieces)
        media = _concat_rows(media_pieces, 0, dtype, round_up(max(n, 1), MEDIA_ROW_BUCKET))
        rows = jnp.take(media, jnp.maximum(media_row, 0), axis=0)
        x = jnp.where((media_row >= 0)[..., None], rows, tokens)
    if not deepstack_pieces:
        return x, None
    stacked = [jnp.stack(levels) for levels in deepstack_pieces]  # [L, m_i, H]
    m = sum(p.shape[1] for p in stacked)
    deep = _concat_rows(stacked, 1, dtype, round_up(max(m, 1), MEDIA_ROW_BUCKET))
    ds = jnp.take(deep, jnp.maximum(deepstack_row, 0), axis=1)
    return x, jnp.where((deepstack_row >= 0)[None, ..., None], ds, jnp.zeros((), dtype))


def embed_multimodal(params: dict, cfg: OmniConfig, batch, dtype=None) -> tuple[jax.Array, jax.Array | None]:
    """(inputs_embeds [B, P, H], deepstack [n, B, P, H] or None) for a MultimodalBatch-like object.

    ``params``: the Thinker's pure parameter dict (``text``, ``visual``, ``audio``); ``dtype``: the compute dtype
    of the encoders and of the result (default: the text embedding's dtype).
    """
    t = cfg.thinker
    embed = params["text"]["embed"]
    dtype = jnp.dtype(dtype or jnp.asarray(embed).dtype)
    pieces, deep_pieces = [], []
    n_audio, audio_rows = 0, None
    if getattr(batch, "input_features", None) is not None:
        audio, audio_rows, _ = _encode_audio_unpacked(params["audio"], batch.input_features,
                                                      batch.feature_attention_mask, t.audio, dtype)
        pieces.append(audio)  # unpacked [A, N, out]: the merge gathers the packed rows
        n_audio = len(audio_rows)
    counts = {}
    for kind, pixels, grids in (("image", getattr(batch, "pixel_values", None), getattr(batch, "image_grid_thw", None)),
                                ("video", getattr(batch, "pixel_values_videos", None),
                                 getattr(batch, "video_grid_thw", None))):
        counts[kind] = 0
        if pixels is None:
            continue
        emb, deep = encode_vision(params["visual"], pixels, grids, t.vision, dtype)
        pieces.append(emb)
        if deep:
            deep_pieces.append(deep)
        counts[kind] = emb.shape[0]
    media_row, deep_row = media_layout(batch.input_ids, cfg, n_audio, counts["image"], counts["video"])
    if n_audio:  # packed audio row k -> its row in the unpacked output; the rows after the audio shift
        unpacked = audio.shape[0] * audio.shape[1]
        is_audio = (media_row >= 0) & (media_row < n_audio)
        media_row = np.where(is_audio, audio_rows[np.clip(media_row, 0, n_audio - 1)],
                             np.where(media_row >= n_audio, media_row - n_audio + unpacked, media_row)).astype(np.int32)
    return merge_embeddings(embed, np.asarray(batch.input_ids), tuple(pieces), media_row,
                            tuple(deep_pieces),
                            deep_row if deep_pieces else None, dtype=dtype)


def has_media(batch) -> bool:
    """The batch carries audio, images or videos (else its prompt is token embeddings only)."""
    return any(getattr(batch, k, None) is not None for k in ("input_features", "pixel_values", "pixel_values_videos"))


def prepare_prompt(params: dict, cfg: OmniConfig, batch, dtype=None, drop_deepstack: bool = False) -> PreparedPrompt:
    """A MultimodalBatch -> PreparedPrompt for ``ThinkerEngine`` (``drop_deepstack`` is for ablations/tests).

    Without media (and without a ``dtype`` of its own) the prompt carries no embeddings: the prefill looks the
    tokens up itself, in the same program. ``extras["media"]`` keeps the batch (grids, feature mask: what the
    Talker's prompt needs)."""
    embeds = deepstack = None
    if has_media(batch) or dtype is not None:
        embeds, deepstack = embed_multimodal(params, cfg, batch, dtype)
    return PreparedPrompt(np.asarray(batch.input_ids, np.int32), np.asarray(batch.attention_mask, np.int32),
                          np.asarray(batch.position_ids, np.float32), np.asarray(batch.rope_deltas, np.float32),
                          inputs_embeds=embeds, deepstack=None if drop_deepstack else deepstack,
                          extras={"use_audio_in_video": bool(getattr(batch, "use_audio_in_video", False)),
                                  "media": batch})


def prepared_prompt_shape(params: dict, cfg: OmniConfig, batch) -> PreparedPrompt:
    """What ``prepare_prompt(params, cfg, batch)`` returns, without running the encoders: the host arrays, and
    ShapeDtypeStructs for the embeddings and the deepstack payload (to compile the later programs ahead)."""
    ids = np.asarray(batch.input_ids, np.int32)
    b, p = ids.shape
    embeds = deepstack = None
    if has_media(batch):
        table = params["text"]["embed"]
        embeds = jax.ShapeDtypeStruct((b, p, table.shape[-1]), table.dtype)
        v = cfg.thinker.vision
        levels = len({i for i in v.deepstack_visual_indexes if i < v.depth})
        visual = any(getattr(batch, k, None) is not None for k in ("pixel_values", "pixel_values_videos"))
        if levels and visual:
            deepstack = jax.ShapeDtypeStruct((levels, b, p, table.shape[-1]), table.dtype)
    return PreparedPrompt(ids, np.asarray(batch.attention_mask, np.int32), np.asarray(batch.position_ids, np.float32),
                          np.asarray(batch.rope_deltas, np.float32), inputs_embeds=embeds, deepstack=deepstack,
                          extras={"media": batch})


def thinker_logits(params: dict, cfg: OmniConfig, prompt: PreparedPrompt, opts=None) -> jax.Array:
    """Full-sequence logits [B, P, V] of a prepared prompt (no cache): for parity checks and scoring."""
    from omni_jax.models.decoder import StackOptions

    opts = opts or StackOptions.uniform(cfg.thinker.text)
    embeds = prompt.inputs_embeds
    if embeds is None:
        embeds = thinker_text.embed_tokens(params["text"], jnp.asarray(prompt.input_ids))
    return _logits(params["text"], cfg.thinker.text, opts, embeds, jnp.asarray(prompt.position_ids),
                   jnp.asarray(prompt.attention_mask), prompt.deepstack)


def _logits_impl(text_params, text_cfg, opts, embeds, position_ids, attention_mask, deepstack):
    return thinker_text.text_forward(text_params, text_cfg, opts, embeds, position_ids, attention_mask,
                                     deepstack=deepstack, logits_at="all")["logits"]


_logits = jax.jit(_logits_impl, static_argnames=("text_cfg", "opts"))
