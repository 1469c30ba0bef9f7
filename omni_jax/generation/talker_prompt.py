"""The Talker's prompt, built from the Thinker's generation exactly as HF's ``generate`` builds it.

Per row (rows are independent: each equals that prompt generated alone):
- **user part**: every prompt token whose governing role is ``user`` (the token right after the most recent
  ``<|im_start|>``; system turns and earlier assistant turns are dropped, as in HF). Multimodal placeholder
  positions (audio / image / video ids) -> ``hidden_projection(thinker layer accept-1 output)``, other positions
  -> ``text_projection(thinker input embedding)``.
- **assistant part** (9 positions) from the last ``<|im_start|>assistant`` of the prompt,
  ``A = text_projection(thinker embeds from there on)`` = [<|im_start|>, assistant, \\n, g1, g2, ...]::

      text:   A0  A1  A2  P   P   P   P    Bos   A3(=g1)
      codec:  0   0   0   NT  TB  TE  SPK  CPAD  CBOS

  (P/Bos/Eos = ``text_projection(thinker embedding of tts_pad/tts_bos/tts_eos)``; codec entries are the
  talker's ``codec_embedding`` of the codec specials and the speaker id.)
- **trailing text** ``[A4 .. (g2 .. g_{n-1}), Eos]``: one entry is added to each talker decode step's input,
  then P once they are used up. ``g_n`` (the Thinker's last token, usually ``<|im_end|>``) is never fed back.
- **position ids** on ``user ids ++ [tts_pad] * 9``: the text branch (``cumsum(mask) - 1``) without media,
  else ``get_rope_index`` with the prompt's image/video grids and audio feature lengths; HF does not pass
  ``use_audio_in_video`` to the talker, so neither do we. Decoding continues ``last + 1``.

Batches are left-padded to ``PROMPT_BUCKET`` (the user parts right-aligned) so the talker's jitted prefill is
reused across prompts of similar length.

Two places where we follow the single-prompt reference rather than HF's batch path: HF's batched ``generate``
moves ``tts_eos`` of rows whose Thinker stopped early one entry later than a single-prompt run puts it (so a
batched row hears ``<|im_end|>``'s text embedding before Eos, a solo row does not), and HF takes the assistant
start of row 0 for every row; here every row is built as it would be alone. A Thinker that produced a single
token (HF crashes there: its assistant part has 8 text entries for 9 codec entries) gets P as A3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.config import OmniConfig
from omni_jax.errors import UsageError
from omni_jax.executables import program
from omni_jax.generation.ahead import committed
from omni_jax.models.prompt import PROMPT_BUCKET, round_up
from omni_jax.models.talker import resize_mlp
from omni_jax.positions import RopeIndexConfig, get_rope_index
from omni_jax.sharding import to_host

ASSISTANT_POSITIONS = 9
TRAILING_BUCKET = 32
GEN_BUCKET = 32


class TalkerPromptError(UsageError):
    """The Thinker prompt cannot drive the Talker (e.g. it has no ``<|im_start|>assistant`` turn)."""


@dataclass
class TalkerMedia:
    """What the talker's positions need from a multimodal prompt (HF's names; None = absent).

    ``audio_feature_lengths`` are the mel-frame counts per audio (``feature_attention_mask.sum(-1)``)."""

    image_grid_thw: Any = None
    video_grid_thw: Any = None
    video_second_per_grid: Any = None
    audio_feature_lengths: Any = None

    @classmethod
    def from_source(cls, src: Any) -> "TalkerMedia":
        """From a mapping (e.g. ``PreparedPrompt.extras``) or an object with those attributes (e.g. the
        multimodal processor's batch, whose ``feature_attention_mask`` gives the audio lengths)."""
        get = src.get if isinstance(src, Mapping) else (lambda k, d=None: getattr(src, k, d))
        lengths = get("audio_feature_lengths")
        fam = get("feature_attention_mask")
        if lengths is None and fam is not None:
            lengths = np.asarray(fam).sum(-1)
        return cls(get("image_grid_thw"), get("video_grid_thw"), get("video_second_per_grid"), lengths)

    def grids(self):
        def nonempty(g):
            return None if g is None or np.asarray(g).size == 0 else np.asarray(g)

        return nonempty(self.image_grid_thw), nonempty(self.video_grid_thw)

    @property
    def any(self) -> bool:
        """HF's ``has_multimodal_data``: audio lengths given, or a non-empty image/video grid."""
        img, vid = self.grids()
        return self.audio_feature_lengths is not None or img is not None or vid is not None


@dataclass
class TalkerPrompt:
    """A left-padded talker batch. Embeddings are device arrays in the talker's dtype."""

    inputs_embeds: jax.Array  # [B, P, H]
    attention_mask: np.ndarray  # [B, P] int32
    position_ids: np.ndarray  # [3, B, P] float32
    input_ids: np.ndarray  # [B, P] int32: user ids ++ [tts_pad] * 9 (0 at padding)
    trailing_text: jax.Array  # [B, T, H]: each row's trailing entries, then P (T a multiple of TRAILING_BUCKET)
    trailing_lengths: np.ndarray  # [B] real trailing entries per row (Eos included)
    tts_pad_embed: jax.Array  # [H]
    next_position: np.ndarray  # [B] float32: position of the first decoded token

    @property
    def batch(self) -> int:
        return self.attention_mask.shape[0]

    @property
    def length(self) -> int:
        return self.attention_mask.shape[1]


@dataclass(frozen=True)
class _RowPlan:
    user_cols: np.ndarray  # prompt columns of the user part, in order
    assistant_col: int  # prompt column of the last <|im_start|> followed by ``assistant``


def user_positions(ids: np.ndarray, cfg: OmniConfig) -> np.ndarray:
    """Indices of ``ids`` (one unpadded prompt) whose governing role token is ``user`` (HF's rule: the token
    after the most recent ``<|im_start|>``; before any, the token at index 1)."""
    n = len(ids)
    idx = np.arange(n)
    prev = np.maximum.accumulate(np.where(ids == cfg.im_start_token_id, idx, -1))
    role = ids[np.minimum(np.maximum(prev, 0) + 1, n - 1)]
    return np.nonzero(role == cfg.user_token_id)[0]


def assistant_start(ids: np.ndarray, cfg: OmniConfig) -> int | None:
    hits = np.nonzero((ids[:-1] == cfg.im_start_token_id) & (ids[1:] == cfg.assistant_token_id))[0]
    return int(hits[-1]) if hits.size else None


def generated_lengths(tokens: np.ndarray, eos_ids: Sequence[int]) -> np.ndarray:
    """tokens [steps, B] -> per row the number of tokens up to and including the first EOS (else all)."""
    steps = tokens.shape[0]
    is_eos = np.isin(tokens, list(eos_ids))
    first = np.where(is_eos.any(0), is_eos.argmax(0), steps - 1)
    return (first + 1).astype(np.int64)


def _plan_rows(input_ids: np.ndarray, attention_mask: np.ndarray, cfg: OmniConfig) -> list[_RowPlan]:
    plans = []
    for b in range(input_ids.shape[0]):
        cols = np.nonzero(np.asarray(attention_mask[b]) > 0)[0]
        ids = np.asarray(input_ids[b])[cols]
        start = assistant_start(ids, cfg)
        if start is None:
            raise TalkerPromptError(f"prompt row {b} has no '<|im_start|>assistant' turn: the talker needs the chat "
                                    "template's generation prompt")
        if start + 3 > len(ids):
            raise TalkerPromptError(f"prompt row {b} ends inside the '<|im_start|>assistant\\n' header")
        plans.append(_RowPlan(cols[user_positions(ids, cfg)], int(cols[start])))
    return plans


def talker_positions(input_ids: np.ndarray, attention_mask: np.ndarray, cfg: OmniConfig,
                     media: TalkerMedia | None) -> np.ndarray:
    """[3, B, P] float32 position ids of a talker prompt (``compute_3d_position_ids`` at prefill)."""
    t = cfg.talker
    if media is None or not media.any:
        pos, _ = get_rope_index(input_ids, attention_mask)
        return pos
    rope_cfg = RopeIndexConfig(image_token_id=t.image_token_id, video_token_id=t.video_token_id,
                               audio_token_id=t.audio_token_id, vision_start_token_id=t.vision_start_token_id,
                               audio_start_token_id=t.audio_start_token_id, spatial_merge_size=t.spatial_merge_size,
                               position_id_per_seconds=t.position_id_per_seconds,
                               n_window=cfg.thinker.audio.n_window)  # the talker config has none: the thinker's
    img, vid = media.grids()
    pos, _ = get_rope_index(input_ids, attention_mask, img, vid, media.audio_feature_lengths,
                            media.video_second_per_grid, use_audio_in_video=False, cfg=rope_cfg)
    return pos


@program(static_argnames=("has_mm",))
def _assemble(tparams, embed_table, special_ids, codec_ids, prompt_embeds, prompt_hidden, gen_embeds, user_cols,
              user_valid, user_mm, head_cols, gen_len, trail_src, trail_len, has_mm: bool):
    """Everything on device in one compiled function (all shapes bucketed; see ``build_talker_prompt``)."""
    dtype = tparams["codec_embedding"].dtype
    b = prompt_embeds.shape[0]
    rows = jnp.arange(b)[:, None]

    def text_proj(x):
        return resize_mlp(tparams["text_projection"], x.astype(dtype))

    # user parts (right-aligned): multimodal positions from the tapped hidden state, others from the embeddings
    user = text_proj(prompt_embeds[rows, user_cols])
    if has_mm:
        mm = resize_mlp(tparams["hidden_projection"], prompt_hidden[rows, user_cols].astype(dtype))
        user = jnp.where(user_mm[..., None], mm, user)
    user = jnp.where(user_valid[..., None], user, 0).astype(dtype)

    bos, eos, pad = text_proj(embed_table[special_ids])
    codec = tparams["codec_embedding"][codec_ids]  # [6, H]
    h = pad.shape[-1]
    head = text_proj(prompt_embeds[rows, head_cols])  # A0..A2
    gen_text = text_proj(gen_embeds)  # [B, S, H]: g1, g2, ...
    first = jnp.where((gen_len >= 2)[:, None], gen_text[:, 0], pad)  # A3 = g1
    text_part = jnp.concatenate([head, jnp.broadcast_to(pad, (b, 4, h)), jnp.broadcast_to(bos, (b, 1, h)),
                                 first[:, None]], axis=1)
    codec_part = jnp.concatenate([jnp.zeros((b, 3, h), dtype), jnp.broadcast_to(codec, (b, 6, h))], axis=1)
    embeds = jnp.concatenate([user, (text_part + codec_part).astype(dtype)], axis=1)

    # trailing text: entry j = g_{j+2} while j < len - 1, Eos at j = len - 1, then P
    j = jnp.arange(trail_src.shape[0])[None, :, None]
    n = trail_len[:, None, None]
    trailing = jnp.where(j < n - 1, gen_text[:, trail_src], jnp.where(j == n - 1, eos, pad)).astype(dtype)
    return embeds, trailing, pad.astype(dtype)


def text_widths(max_new_tokens: int) -> tuple[int, int]:
    """(generated-embedding width, trailing-text width) of the talker prompt of a Thinker run of at most
    ``max_new_tokens`` tokens: bucketed, and known before the Thinker runs."""
    return round_up(max(max_new_tokens - 1, 1), GEN_BUCKET), round_up(max(max_new_tokens, 1), TRAILING_BUCKET)


def build_talker_prompt(cfg: OmniConfig, talker_params: dict, thinker_embed_table: jax.Array, records: Sequence,
                        input_ids: np.ndarray, attention_mask: np.ndarray, speaker_id: int,
                        thinker_eos_ids: Sequence[int], media: TalkerMedia | None = None,
                        bucket: int = PROMPT_BUCKET, max_new_tokens: int | None = None) -> TalkerPrompt:
    """Build the talker batch from the Thinker's ``StepRecord``s.

    records: what ``ThinkerEngine.stream`` yielded with the tap ``accept_hidden_layer - 1`` (record 0 is the
    prefill: ``embeds``/``taps`` [B, P, Hth] over the prompt; record k >= 1: ``embeds`` [B, 1, Hth] of token
    k-1). input_ids / attention_mask: the Thinker prompt (left-padded) the records came from.
    thinker_embed_table: the Thinker's token embedding [V, Hth] (for tts_pad / tts_bos / tts_eos).
    Index bookkeeping runs on the host; the projections in one jitted function whose shapes are bucketed: by
    ``text_widths(max_new_tokens)`` when the Thinker's token budget is given (the shapes are then known before
    it runs), else by the number of records.
    """
    t = cfg.talker
    if not records:
        raise TalkerPromptError("no Thinker output to speak: the record list is empty")
    input_ids, attention_mask = np.asarray(input_ids), np.asarray(attention_mask)
    tap_key = f"tap_{t.accept_hidden_layer - 1}"
    if tap_key not in (records[0].taps or {}):
        raise TalkerPromptError(f"the Thinker records lack {tap_key!r}: run the Thinker with "
                                f"StackOptions(taps=({t.accept_hidden_layer - 1},))")
    b, p = input_ids.shape
    prompt_embeds = records[0].embeds
    if tuple(prompt_embeds.shape[:2]) != (b, p):
        raise TalkerPromptError(f"records[0].embeds has shape {tuple(prompt_embeds.shape)}, the prompt is {(b, p)}")
    tokens = np.stack([np.asarray(r.tokens) for r in records])  # [steps + 1, B]
    gen = generated_lengths(tokens, thinker_eos_ids)
    plan = plan_talker_prompt(cfg, input_ids, attention_mask, speaker_id, media, bucket)

    # generated tokens' embeddings (records 1..), host-concatenated and padded to a bucket
    steps = len(records) - 1
    hth = prompt_embeds.shape[-1]
    trail_len = np.maximum(gen - 1, 1).astype(np.int32)  # g2 .. g_{n-1} (n - 2 entries) + Eos
    if max_new_tokens is not None and steps < max_new_tokens:
        g_width, t_width = text_widths(max_new_tokens)
    else:
        g_width, t_width = round_up(max(steps, 1), GEN_BUCKET), round_up(int(trail_len.max()), TRAILING_BUCKET)
    gen_embeds = np.zeros((b, g_width, hth), prompt_embeds.dtype)
    if steps:
        gen_embeds[:, :steps] = np.concatenate([to_host(r.embeds) for r in records[1:]], axis=1)
    embeds, trailing, pad = assemble_talker_prompt(plan, talker_params, thinker_embed_table, prompt_embeds,
                                                   records[0].taps[tap_key] if plan.has_mm else None, gen_embeds,
                                                   gen.astype(np.int32), t_width)
    return plan.prompt(embeds, trailing, trail_len, pad)


@dataclass
class TalkerPlan:
    """Everything about a talker prompt that depends on the Thinker prompt only (computed on the host before
    generation, so the rest can run inside a jitted function)."""

    cols: np.ndarray  # [B, W] prompt columns of the user parts, right-aligned
    valid: np.ndarray  # [B, W] bool
    mm: np.ndarray  # [B, W] bool: multimodal placeholder positions
    head_cols: np.ndarray  # [B, 3] columns of <|im_start|> assistant \n
    ids: np.ndarray  # [B, W + 9] talker input ids
    mask: np.ndarray  # [B, W + 9]
    position_ids: np.ndarray  # [3, B, W + 9]
    special_ids: np.ndarray  # [3] tts_bos, tts_eos, tts_pad
    codec_ids: np.ndarray  # [6] the codec specials and the speaker

    @property
    def has_mm(self) -> bool:
        return bool(self.mm.any())

    def prompt(self, embeds, trailing, trail_len, pad) -> TalkerPrompt:
        pos = self.position_ids
        return TalkerPrompt(embeds, self.mask, pos, self.ids, trailing, np.asarray(trail_len, np.int32), pad,
                            (pos[0, :, -1] + 1).astype(np.float32))


def plan_talker_prompt(cfg: OmniConfig, input_ids: np.ndarray, attention_mask: np.ndarray, speaker_id: int,
                       media: TalkerMedia | None = None, bucket: int = PROMPT_BUCKET) -> TalkerPlan:
    t = cfg.talker
    input_ids, attention_mask = np.asarray(input_ids), np.asarray(attention_mask)
    b = input_ids.shape[0]
    plans = _plan_rows(input_ids, attention_mask, cfg)
    # user parts, right-aligned in a bucketed width (the talker prompt is that + 9 positions)
    n_user = max(len(pl.user_cols) for pl in plans)
    width = round_up(n_user + ASSISTANT_POSITIONS, bucket) - ASSISTANT_POSITIONS
    cols = np.zeros((b, width), np.int32)
    valid = np.zeros((b, width), bool)
    for i, pl in enumerate(plans):
        n = len(pl.user_cols)
        cols[i, width - n:] = pl.user_cols
        valid[i, width - n:] = True
    user_ids = np.where(valid, np.take_along_axis(input_ids, cols, axis=1), 0)
    mm = np.isin(user_ids, [cfg.thinker.audio_token_id, cfg.thinker.image_token_id, cfg.thinker.video_token_id])
    mm &= valid
    head_cols = np.asarray([[pl.assistant_col + k for k in range(3)] for pl in plans], np.int32)
    ids = np.concatenate([user_ids, np.full((b, ASSISTANT_POSITIONS), cfg.tts_pad_token_id)], axis=1).astype(np.int32)
    mask = np.concatenate([valid, np.ones((b, ASSISTANT_POSITIONS), bool)], axis=1).astype(np.int32)
    pos = talker_positions(ids, mask, cfg, media)
    special_ids = np.asarray([cfg.tts_bos_token_id, cfg.tts_eos_token_id, cfg.tts_pad_token_id], np.int32)
    codec_ids = np.asarray([t.codec_nothink_id, t.codec_think_bos_id, t.codec_think_eos_id, speaker_id,
                            t.codec_pad_id, t.codec_bos_id], np.int32)
    return TalkerPlan(cols, valid, mm, head_cols, ids, mask, pos, special_ids, codec_ids)


def compile_talker_prompt(plan: TalkerPlan, talker_params: dict, thinker_embed_table, prompt_embeds, prompt_hidden,
                          max_new_tokens: int):
    """Compile, before the Thinker has run, the talker-prompt program ``build_talker_prompt(...,
    max_new_tokens=max_new_tokens)`` will run for ``plan``; prompt_embeds / prompt_hidden (the prefill's input
    embeddings and tapped states, None without multimodal positions) may be ShapeDtypeStructs. Returns the
    ShapeDtypeStructs of its outputs (embeds, trailing, tts_pad)."""
    g_width, t_width = text_widths(max_new_tokens)
    b = plan.cols.shape[0]
    gen = jax.ShapeDtypeStruct((b, g_width, prompt_embeds.shape[-1]), prompt_embeds.dtype)
    rows = jax.ShapeDtypeStruct((b,), np.int32)
    prompt_embeds, prompt_hidden = committed((prompt_embeds, prompt_hidden))  # Thinker outputs; gen: host
    return _assemble.prepare(talker_params, thinker_embed_table, plan.special_ids, plan.codec_ids, prompt_embeds,
                             prompt_hidden if plan.has_mm else None, gen, plan.cols, plan.valid, plan.mm,
                             plan.head_cols, rows, _trail_src(t_width, g_width), rows, has_mm=plan.has_mm)


def _trail_src(t_width: int, gen_width: int) -> np.ndarray:
    return np.clip(np.arange(t_width) + 1, 0, gen_width - 1).astype(np.int32)


def assemble_talker_prompt(plan: TalkerPlan, talker_params: dict, thinker_embed_table, prompt_embeds, prompt_hidden,
                           gen_embeds, gen_len, t_width: int, has_mm: bool | None = None):
    """(embeds [B, W + 9, H], trailing [B, t_width, H], tts_pad [H]); traceable (works inside jit).

    gen_embeds [B, S, Hth]: the Thinker's input embeddings of its generated tokens g1, g2, ...; gen_len [B]:
    generated tokens per row up to and including the first EOS. has_mm: ``plan.has_mm`` (pass it when the plan's
    arrays are traced)."""
    has_mm = plan.has_mm if has_mm is None else has_mm
    trail_len = (gen_len - 1).clip(1).astype("int32")  # host or traced, like gen_len
    trail_src = _trail_src(t_width, gen_embeds.shape[1])
    return _assemble(talker_params, thinker_embed_table, plan.special_ids, plan.codec_ids, prompt_embeds,
                     prompt_hidden, gen_embeds, plan.cols, plan.valid, plan.mm, plan.head_cols, gen_len, trail_src,
                     trail_len, has_mm=has_mm)

