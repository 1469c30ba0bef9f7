"""The Talker's decode loop: codec frames (16 codes each) from a talker prompt (reference notes §7.2).

prefill (the whole prompt, into a preallocated KV cache) -> sample the layer-0 code c0. Then per step:
  code predictor (one jitted 15-step loop, ``code_predictor.predict_codes``) on [past_hidden, codec_embedding(c0)]
  -> frame [c0, c1..c15];
  next input = codec_embedding(c0) + sum of the residual codes' embeddings + trailing text entry (or tts_pad)
  -> one talker forward -> sample the next c0.
A row stops when it samples the codec EOS; the EOS (and, at the length limit, the last sampled c0) has no
frame, so frames = sampled tokens - 1 (quirk 10). The step (code predictor + talker forward + sampling) is
ONE jitted function with static shapes (the cache is preallocated; the step index, positions and row states are
traced), so decoding never recompiles; the Python loop over steps is what makes streaming possible.

Sampling follows HF's talker: repetition penalty on the codec tokens this row generated so far (the prompt is
embeddings, quirk 11; it applies in greedy decoding too), tokens ``[vocab-1024, vocab)`` other than the codec EOS
suppressed, then temperature / top-k / top-p when sampling. The code predictor samples with top-k 50, top-p 0.8
(temperature 1) when the talker samples, else greedy. Every row draws from its own PRNG key (``seeds[b]``), so
a row's output does not depend on the other rows of the batch. Rows that stopped are fed as padding (masked
out of attention and MoE) until every row has stopped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.config import TalkerConfig
from omni_jax.generation.sampling import SamplingConfig, sample
from omni_jax.generation.talker_prompt import TalkerPrompt
from omni_jax.generation.thinker_engine import CACHE_BUCKET, round_up
from omni_jax.models import code_predictor as cp
from omni_jax.models.decoder import KVCache, StackOptions
from omni_jax.models.talker import talker_forward
from omni_jax.sharding import constrain_cache, on_mesh, replicated, to_host


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


@functools.partial(jax.jit, static_argnames=("cfg", "opts", "sampling"), donate_argnames=("cache",))
def _prefill(params, cfg: TalkerConfig, opts: StackOptions, sampling: TalkerSampling, embeds, position_ids,
             attention_mask, cache, seeds):
    out = talker_forward(params, cfg, opts, embeds, position_ids, attention_mask, cache=cache, logits_at="last")
    b, v = embeds.shape[0], cfg.text.vocab_size
    seen = jnp.zeros((b, v), bool)
    keys = jax.vmap(jax.random.split)(row_keys(seeds, 0))[:, 0]
    c0 = _sample_rows(out["logits"][:, -1], keys, sampling.talker(), seen, jnp.asarray(suppressed_tokens(cfg)))
    c0, hidden, stats = replicated((c0, out["hidden"][:, -1], out["stats"]))
    return c0, hidden, constrain_cache(out["cache"]), stats


@functools.partial(jax.jit, static_argnames=("cfg", "opts", "sampling"), donate_argnames=("cache",))
def _step(params, cfg: TalkerConfig, opts: StackOptions, sampling: TalkerSampling, step, c0, past_hidden, active,
          seen, positions, trailing_text, trailing_lengths, tts_pad, cache, seeds):
    """Frame of ``c0`` (code predictor) + the talker forward of its embedding -> next c0.

    step: traced int32 (decode step s = 0, 1, ...); c0 [B]; past_hidden [B, H] (final normed); active [B] bool;
    seen [B, V] bool (codec tokens sampled so far); positions [B] float (this step's position);
    trailing_text [B, T, H]; trailing_lengths [B].
    """
    keys = jax.vmap(jax.random.split)(row_keys(seeds, step + 1))  # [B, 2]
    c0_embed = params["codec_embedding"][c0]

    def predict_row(h, e, key):
        out = cp.predict_codes(params["code_predictor"], h[None], e[None], key, cfg.code_predictor,
                               sample=sampling.do_sample, top_k=sampling.cp_top_k, top_p=sampling.cp_top_p,
                               temperature=sampling.cp_temperature)
        return out["codes"][0], out["embed_sum"][0]

    residual, embed_sum = jax.vmap(predict_row)(past_hidden, c0_embed, keys[:, 1])
    frame = jnp.concatenate([c0[:, None], residual], axis=1)

    t = trailing_text.shape[1]
    entry = jax.lax.dynamic_index_in_dim(trailing_text, jnp.minimum(step, t - 1), axis=1, keepdims=False)
    text = jnp.where((step < trailing_lengths)[:, None], entry, tts_pad[None])
    codec_sum = (c0_embed.astype(jnp.float32) + embed_sum.astype(jnp.float32)).astype(text.dtype)  # HF: one sum
    x = (codec_sum + text).astype(past_hidden.dtype)[:, None]
    pos = jnp.broadcast_to(positions[None, :, None], (3, c0.shape[0], 1))
    out = talker_forward(params, cfg, opts, x, pos, active[:, None].astype(jnp.int32), cache=cache,
                         logits_at="last")
    seen = seen.at[jnp.arange(c0.shape[0]), c0].set(True)
    nxt = _sample_rows(out["logits"][:, -1], keys[:, 0], sampling.talker(), seen,
                       jnp.asarray(suppressed_tokens(cfg)))
    frame, nxt, hidden, seen, stats, x = replicated((frame, nxt, out["hidden"][:, -1], seen, out["stats"], x[:, 0]))
    return frame, nxt, hidden, seen, constrain_cache(out["cache"]), stats, x


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
        self.params = talker_params
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
        seeds = on_mesh(np.asarray(seeds, np.uint32))
        cache = KVCache.create(self.cfg.text, b, self.cache_size(prompt.length, max_frames), self.dtype)
        c0, hidden, cache, _ = _prefill(self.params, self.cfg, self.opts, sampling,
                                        on_mesh(jnp.asarray(prompt.inputs_embeds, self.dtype)),
                                        *on_mesh((prompt.position_ids, prompt.attention_mask)), cache, seeds)
        eos = self.cfg.codec_eos_token_id
        done = to_host(c0) == eos
        seen = on_mesh(np.zeros((b, self.cfg.text.vocab_size), bool))
        positions = on_mesh(np.asarray(prompt.next_position, np.float32))
        trailing = on_mesh(jnp.asarray(prompt.trailing_text, self.dtype))
        lengths = on_mesh(np.asarray(prompt.trailing_lengths, np.int32))
        pad = on_mesh(jnp.asarray(prompt.tts_pad_embed, self.dtype))
        for s in range(max_frames):
            if done.all():
                return
            active = ~done
            frame, c0, hidden, seen, cache, stats, x = _step(
                self.params, self.cfg, self.opts, sampling, *on_mesh((np.int32(s), c0, hidden, active)), seen,
                on_mesh(positions + s), trailing, lengths, pad, cache, seeds)
            yield FrameRecord(to_host(frame), active, stats, x)
            done |= to_host(c0) == eos

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
    return {"prefill": _prefill._cache_size(), "step": _step._cache_size()}
