"""The Talker's decode loop: codec frames (16 codes each) from a talker prompt, as HF's talker ``generate`` runs it.

prefill (the whole prompt, into a preallocated KV cache) -> sample the layer-0 code c0. Then per step:
  code predictor (one jitted 15-step loop, ``code_predictor.predict_codes``) on [past_hidden, codec_embedding(c0)]
  -> frame [c0, c1..c15];
  next input = codec_embedding(c0) + sum of the residual codes' embeddings + trailing text entry (or tts_pad)
  -> one talker forward -> sample the next c0.
A row stops when it samples the codec EOS; the EOS (and, at the length limit, the last sampled c0) has no
frame, so frames = sampled tokens - 1. The step (code predictor + talker forward + sampling) is
ONE jitted function with static shapes (the cache is preallocated; the step index, positions and row states are
traced), so decoding never recompiles; the Python loop over steps is what makes streaming possible.

Sampling follows HF's talker: repetition penalty on the codec tokens this row generated so far (the prompt is
embeddings; it applies in greedy decoding too), tokens ``[vocab-1024, vocab)`` other than the codec EOS
suppressed, then temperature / top-k / top-p when sampling. The code predictor samples with top-k 50, top-p 0.8
(temperature 1) when the talker samples, else greedy. Every row draws from its own PRNG key (``seeds[b]``), so
a row's output does not depend on the other rows of the batch. Rows that stopped are fed as padding (masked
out of attention and MoE) until every row has stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.config import TalkerConfig
from omni_jax.executables import program
from omni_jax.generation.ahead import committed, wait_for
from omni_jax.generation.sampling import SamplingConfig, sample
from omni_jax.generation.talker_prompt import TalkerPrompt
from omni_jax.generation.thinker_engine import CACHE_BUCKET
from omni_jax.models import code_predictor as cp
from omni_jax.models import talker as talker_model
from omni_jax.models.decoder import KVCache, StackOptions
from omni_jax.models.prompt import round_up
from omni_jax.models.talker import talker_forward
from omni_jax.sharding import constrain_cache, replicated, to_host


@dataclass(frozen=True)
class TalkerSampling:
    """The reference's talker defaults (``Qwen3OmniMoeForConditionalGeneration.generate``)."""

    do_sample: bool = True
    temperature: float = 0.9
    top_k: int | None = 50
    top_p: float | None = 1.0
    repetition_penalty: float = 1.05
    cp_top_k: int = cp.TOP_K
    cp_top_p: float = cp.TOP_P
    cp_temperature: float = cp.TEMPERATURE

    def __post_init__(self):
        self.talker()  # validates temperature / top-k / top-p / penalty

    @classmethod
    def greedy(cls, repetition_penalty: float = 1.05) -> "TalkerSampling":
        """``talker_do_sample=False``: argmax for c0 and the residual codes; the penalty still applies."""
        return cls(do_sample=False, repetition_penalty=repetition_penalty)

    def talker(self) -> SamplingConfig:
        return SamplingConfig(do_sample=self.do_sample, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, repetition_penalty=self.repetition_penalty)


def suppressed_tokens(cfg: TalkerConfig) -> np.ndarray:
    """[V] bool: the 1024 codec specials except the codec EOS (HF's ``talker_suppressed_tokens``)."""
    v = cfg.text.vocab_size
    mask = np.zeros(v, bool)
    mask[v - 1024:] = True
    mask[cfg.codec_eos_token_id] = False
    return mask


def row_keys(seeds: Sequence[int], step) -> jax.Array:
    """One key per row for this step: fold_in(key(seed_b), step)."""
    return jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), step))(jnp.asarray(seeds, jnp.uint32))


def _sample_rows(logits, keys, sampling: SamplingConfig, seen, suppress):
    """Per-row draw: logits [B, V], keys [B], seen [B, V] -> [B] int32."""
    one = lambda lg, k, s: sample(lg[None], k, sampling, seen=s[None], suppress=suppress)[0]  # noqa: E731
    return jax.vmap(one)(logits, keys, seen)


@jax.tree_util.register_dataclass
@dataclass
class TalkerState:
    """What one frame step needs from the previous one (all device arrays)."""

    c0: jax.Array  # [B] int32: the codec-0 tokens sampled last
    hidden: jax.Array  # [B, H] final normed hidden state at the last position (the code predictor's past_hidden)
    cache: KVCache
    seen: jax.Array  # [B, V] bool: codec tokens fed so far (repetition penalty)
    step: jax.Array  # int32: frame steps done


@program(static_argnames=("cfg", "opts", "sampling", "cache_size"))
def talker_prefill(params, cfg: TalkerConfig, opts: StackOptions, sampling: TalkerSampling, cache_size: int, embeds,
                   position_ids, attention_mask, seeds):
    """The talker prompt [B, P, H] into a fresh KV cache of ``cache_size`` slots, and the first c0 per row
    (row b draws with ``seeds[b]``). Returns (TalkerState, the prefill's MoE stats)."""
    b, v = embeds.shape[0], cfg.text.vocab_size
    dtype = params["codec_embedding"].dtype
    cache = KVCache.create(cfg.text, b, cache_size, dtype)
    out = talker_forward(params, cfg, opts, embeds.astype(dtype), position_ids, attention_mask, cache=cache,
                         logits_at="last")
    seen = jnp.zeros((b, v), bool)
    keys = jax.vmap(jax.random.split)(row_keys(seeds, 0))[:, 0]
    c0 = _sample_rows(out["logits"][:, -1], keys, sampling.talker(), seen, jnp.asarray(suppressed_tokens(cfg)))
    c0, hidden, seen, step, stats = replicated((c0, out["hidden"][:, -1], seen, jnp.zeros((), jnp.int32), out["stats"]))
    return TalkerState(c0, hidden, constrain_cache(out["cache"]), seen, step), stats


@program(static_argnames=("cfg", "opts", "sampling"), donate_argnames=("state",))
def talker_frame_step(params, cfg: TalkerConfig, opts: StackOptions, sampling: TalkerSampling, state: TalkerState,
                      active, next_position, trailing_text, trailing_lengths, tts_pad, seeds):
    """One frame: the code predictor completes ``state.c0`` into a frame [B, 16], the frame's summed codec
    embedding plus this step's trailing-text entry (``trailing_text[:, step]`` while ``step < trailing_lengths``,
    else ``tts_pad``) is fed to the talker at ``next_position + step``, and the next c0 is sampled.

    active [B] bool (rows that have not stopped; the others are fed as padding); next_position [B]: position of
    the first decoded token; trailing_text [B, T, H]; trailing_lengths [B]; tts_pad [H]; seeds [B] uint32.
    Returns (TalkerState, frame [B, 16] int32, MoE stats, the fed input embedding [B, H]); ``state`` is donated."""
    step, c0, past_hidden = state.step, state.c0, state.hidden
    keys = jax.vmap(jax.random.split)(row_keys(seeds, step + 1))  # [B, 2]
    c0_embed = params["codec_embedding"][c0]

    def predict_row(h, e, key):
        out = cp.predict_codes(params["code_predictor"], h[None], e[None], key, cfg.code_predictor,
                               sample=sampling.do_sample, top_k=sampling.cp_top_k, top_p=sampling.cp_top_p,
                               temperature=sampling.cp_temperature)
        return out["codes"][0], out["embed_sum"][0]

    residual, embed_sum = jax.vmap(predict_row)(past_hidden, c0_embed, keys[:, 1])
    frame = jnp.concatenate([c0[:, None], residual], axis=1)

    dtype = past_hidden.dtype
    trailing_text, tts_pad = trailing_text.astype(dtype), tts_pad.astype(dtype)
    t = trailing_text.shape[1]
    entry = jax.lax.dynamic_index_in_dim(trailing_text, jnp.minimum(step, t - 1), axis=1, keepdims=False)
    text = jnp.where((step < trailing_lengths)[:, None], entry, tts_pad[None])
    codec_sum = (c0_embed.astype(jnp.float32) + embed_sum.astype(jnp.float32)).astype(text.dtype)  # HF: one sum
    x = (codec_sum + text).astype(dtype)[:, None]
    positions = next_position.astype(jnp.float32) + step
    pos = jnp.broadcast_to(positions[None, :, None], (3, c0.shape[0], 1))
    out = talker_forward(params, cfg, opts, x, pos, active[:, None].astype(jnp.int32), cache=state.cache,
                         logits_at="last")
    seen = state.seen.at[jnp.arange(c0.shape[0]), c0].set(True)
    nxt = _sample_rows(out["logits"][:, -1], keys[:, 0], sampling.talker(), seen,
                       jnp.asarray(suppressed_tokens(cfg)))
    # fixed layouts on a context mesh: the cache as created, the rest replicated (readable by every process;
    # the next step sees the layouts this one saw, so it compiles once)
    nxt, hidden, seen, step, frame, stats, x = replicated((nxt, out["hidden"][:, -1], seen, step + 1, frame,
                                                          out["stats"], x[:, 0]))
    return TalkerState(nxt, hidden, constrain_cache(out["cache"]), seen, step), frame, stats, x


def frame_loop(params, cfg: TalkerConfig, opts: StackOptions, sampling: TalkerSampling, state: TalkerState,
               max_frames: int, next_position, trailing_text, trailing_lengths, tts_pad, seeds):
    """``talker_frame_step`` under ``lax.while_loop`` (traceable; call it inside a jit) until every row has
    sampled the codec EOS or ``max_frames`` frames were made (as ``TalkerEngine.stream``).

    Returns (frames [F, B, 16] int32, valid [F, B] bool: the frame belongs to row b, counts [layers, experts]:
    the steps' expert counts, summed)."""
    b = state.c0.shape[0]
    eos = cfg.codec_eos_token_id
    frames = jnp.zeros((max_frames, b, cfg.num_code_groups), jnp.int32)
    valid = jnp.zeros((max_frames, b), bool)
    counts = jnp.zeros((cfg.text.num_layers, cfg.text.num_experts), jnp.int32)

    def cond(carry):
        state, done, _, _, _ = carry
        return (state.step < max_frames) & ~jnp.all(done)

    def body(carry):
        state, done, frames, valid, counts = carry
        s = state.step
        state, frame, stats, _ = talker_frame_step(params, cfg, opts, sampling, state, ~done, next_position,
                                                   trailing_text, trailing_lengths, tts_pad, seeds)
        return (state, done | (state.c0 == eos), frames.at[s].set(frame), valid.at[s].set(~done),
                counts + stats.counts)

    _, _, frames, valid, counts = jax.lax.while_loop(cond, body, (state, state.c0 == eos, frames, valid, counts))
    return frames, valid, counts


@dataclass
class FrameRecord:
    """One decode step: ``frames[b]`` is row b's next codec frame when ``valid[b]``."""

    frames: np.ndarray  # [B, 16] int32
    valid: np.ndarray  # [B] bool
    stats: object  # the talker forward's MoE stats (stacked over layers)
    inputs: jax.Array | None = None  # [B, H] the input embedding this step fed to the talker


class TalkerEngine:
    """Codec-frame generation with the Talker (params: pure dict of ``model.talker``, code predictor included)."""

    def __init__(self, cfg: TalkerConfig, talker_params: dict, opts: StackOptions | None = None):
        self.cfg = cfg
        self.params = talker_model.with_decode_views(talker_params)  # per-layer weights read in place on CPU
        self.opts = opts or StackOptions.uniform(cfg.text)
        self.dtype = jnp.asarray(talker_params["codec_embedding"]).dtype

    def cache_size(self, prompt_len: int, max_frames: int) -> int:
        return round_up(prompt_len + max_frames + 1, CACHE_BUCKET)

    def stream(self, prompt: TalkerPrompt, max_frames: int, sampling: TalkerSampling = TalkerSampling(),
               seeds: Sequence[int] | int = 0) -> Iterator[FrameRecord]:
        """Yield one FrameRecord per decode step until every row sampled the codec EOS or ``max_frames``
        frames were made (HF ``talker_max_new_tokens = max_frames + 1``)."""
        b = prompt.batch
        seeds = list(range(seeds, seeds + b)) if isinstance(seeds, int) else list(seeds)
        if len(seeds) != b:
            raise ValueError(f"{len(seeds)} seeds for a batch of {b} rows")
        if max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {max_frames}")
        seeds = np.asarray(seeds, np.uint32)
        wait_for("talker_prefill")
        state, _ = talker_prefill(self.params, self.cfg, self.opts, sampling,
                                  self.cache_size(prompt.length, max_frames), prompt.inputs_embeds,
                                  prompt.position_ids, prompt.attention_mask, seeds)
        eos = self.cfg.codec_eos_token_id
        done = to_host(state.c0) == eos
        for s in range(max_frames):
            if done.all():
                return
            if s == 0:
                wait_for("talker_frame_step")
            active = ~done
            state, frame, stats, x = talker_frame_step(
                self.params, self.cfg, self.opts, sampling, state, active, prompt.next_position,
                prompt.trailing_text, prompt.trailing_lengths, prompt.tts_pad_embed, seeds)
            yield FrameRecord(to_host(frame), active, stats, x)
            done |= to_host(state.c0) == eos

    def compile_ahead_jobs(self, prompt: TalkerPrompt, max_frames: int, sampling: TalkerSampling,
                           seeds: Sequence[int]) -> list:
        """The compile-ahead jobs (``omni_jax.generation.ahead``) of the prefill and the frame step ``stream``
        will run for a prompt like ``prompt`` (its device arrays may be ShapeDtypeStructs)."""
        seeds = np.asarray(seeds, np.uint32)
        cache_size = self.cache_size(prompt.length, max_frames)
        args = (committed(prompt.inputs_embeds), prompt.position_ids, prompt.attention_mask, seeds)

        def prefill():
            talker_prefill.prepare(self.params, self.cfg, self.opts, sampling, cache_size, *args)

        def step():
            state, _ = talker_prefill.out_shapes(self.params, self.cfg, self.opts, sampling, cache_size, *args)
            active = np.ones(prompt.batch, bool)
            talker_frame_step.prepare(self.params, self.cfg, self.opts, sampling, committed(state), active,
                                      prompt.next_position, committed(prompt.trailing_text), prompt.trailing_lengths,
                                      committed(prompt.tts_pad_embed), seeds)

        return [("talker_prefill", prefill), ("talker_frame_step", step)]

    def generate(self, prompt: TalkerPrompt, max_frames: int, sampling: TalkerSampling = TalkerSampling(),
                 seeds: Sequence[int] | int = 0) -> list[np.ndarray]:
        """Codec frames per row, each [frames_b, num_code_groups] int32."""
        out = [[] for _ in range(prompt.batch)]
        for rec in self.stream(prompt, max_frames, sampling, seeds):
            for i in np.nonzero(rec.valid)[0]:
                out[i].append(rec.frames[i])
        g = self.cfg.num_code_groups
        return [np.stack(f).astype(np.int32) if f else np.zeros((0, g), np.int32) for f in out]


def compile_count() -> dict[str, int]:
    """Compiled variants of the talker's prefill and step (for no-recompilation tests)."""
    return {"prefill": talker_prefill.cache_size(), "step": talker_frame_step.cache_size()}
