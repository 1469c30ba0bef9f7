"""The Thinker's generation engine: a jitted prefill into a preallocated KV cache, then a jitted decode step.

Shapes are static per bucket: prompts are left-padded to a multiple of ``PROMPT_BUCKET`` tokens and the
cache holds ``bucket + max_new_tokens`` rounded up to ``CACHE_BUCKET`` slots, so a second prompt of a
similar length reuses the compiled functions, and decoding never recompiles (one step function per
bucket). The Python loop over steps is what makes streaming possible; each step is one jitted call.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.errors import UsageError
from omni_jax.config import OmniConfig, TextConfig
from omni_jax.generation.sampling import SamplingConfig, sample
from omni_jax.models import thinker_text
from omni_jax.models.decoder import KVCache, StackOptions
from omni_jax.sharding import constrain_cache, on_mesh, replicated, to_host

PROMPT_BUCKET = 32
CACHE_BUCKET = 128


class PromptTooLongError(UsageError):
    """The prompt plus the requested new tokens do not fit the model's context."""


def round_up(n: int, m: int) -> int:
    return max(m, -(-n // m) * m)


@dataclass
class PreparedPrompt:
    """A left-padded batch ready for prefill (host arrays). ``inputs_embeds``/``deepstack`` are optional
    device arrays for multimodal prompts (else token embeddings are looked up from ``input_ids``)."""

    input_ids: np.ndarray  # [B, P] int32
    attention_mask: np.ndarray  # [B, P] int32
    position_ids: np.ndarray  # [3, B, P] float32
    rope_deltas: np.ndarray  # [B] float32
    inputs_embeds: jax.Array | None = None
    deepstack: jax.Array | None = None
    extras: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.input_ids.shape[0]

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]


def pad_left(seqs: list[list[int]], pad_id: int, bucket: int = PROMPT_BUCKET) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists to one bucketed length: (ids [B, P], mask [B, P])."""
    p = round_up(max(len(s) for s in seqs), bucket)
    ids = np.full((len(seqs), p), pad_id, np.int32)
    mask = np.zeros((len(seqs), p), np.int32)
    for i, s in enumerate(seqs):
        if s:
            ids[i, p - len(s):] = s
            mask[i, p - len(s):] = 1
    return ids, mask


def pad_to(prompt: PreparedPrompt, length: int) -> PreparedPrompt:
    """Extra left padding up to ``length`` (positions of padding are irrelevant: they are masked)."""
    extra = length - prompt.length
    if extra <= 0:
        return prompt

    def lp(a, axis, value):
        widths = [(0, 0)] * a.ndim
        widths[axis] = (extra, 0)
        return np.pad(a, widths, constant_values=value)

    emb = prompt.inputs_embeds
    if emb is not None:
        emb = jnp.pad(emb, ((0, 0), (extra, 0), (0, 0)))
    ds = prompt.deepstack
    if ds is not None:
        ds = jnp.pad(ds, ((0, 0), (0, 0), (extra, 0), (0, 0)))
    return PreparedPrompt(lp(prompt.input_ids, 1, 0), lp(prompt.attention_mask, 1, 0),
                          lp(prompt.position_ids, 2, 1.0), prompt.rope_deltas, emb, ds, prompt.extras)


@functools.partial(jax.jit, static_argnames=("cfg", "opts"), donate_argnames=("cache",))
def _prefill(params, cfg: TextConfig, opts: StackOptions, inputs_embeds, position_ids, attention_mask, cache,
             deepstack):
    out = thinker_text.text_forward(params, cfg, opts, inputs_embeds, position_ids, attention_mask, cache=cache,
                                    deepstack=deepstack, logits_at="last")
    logits, stats, taps = replicated((out["logits"][:, -1], out["stats"], out["hidden_states"]))
    return logits, constrain_cache(out["cache"]), stats, taps


@functools.partial(jax.jit, static_argnames=("cfg", "opts"), donate_argnames=("cache",))
def _step(params, cfg: TextConfig, opts: StackOptions, tokens, positions, cache):
    """tokens [B] at positions [B] (same on the 3 rows) -> logits [B, V], cache, stats, taps, input embeds."""
    emb = thinker_text.embed_tokens(params, tokens[:, None])
    pos = jnp.broadcast_to(positions[None, :, None], (3, tokens.shape[0], 1))
    mask = jnp.ones((tokens.shape[0], 1), jnp.int32)
    out = thinker_text.text_forward(params, cfg, opts, emb, pos, mask, cache=cache, logits_at="last")
    logits, stats, taps, emb = replicated((out["logits"][:, -1], out["stats"], out["hidden_states"], emb))
    return logits, constrain_cache(out["cache"]), stats, taps, emb


_embed = jax.jit(thinker_text.embed_tokens)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _sample(logits, key, cfg: SamplingConfig, seen=None):
    return replicated(sample(logits, key, cfg, seen=seen))  # every process (and device) holds the tokens


def cache_size_for(text_cfg: TextConfig, prompt_len: int, max_new_tokens: int) -> int:
    """KV-cache slots for a prompt bucket plus the new tokens; a prompt that cannot fit fails in one line."""
    need = prompt_len + max_new_tokens
    limit = text_cfg.max_position_embeddings
    if need > limit:
        raise PromptTooLongError(f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens exceeds the "
                                 f"model's context of {limit} tokens")
    return min(round_up(need, CACHE_BUCKET), limit)


@dataclass
class StepRecord:
    """What one forward produced, for statistics and for the Talker."""

    tokens: np.ndarray  # [B] tokens sampled from this forward
    stats: object  # MoEStats stacked over layers
    taps: dict  # tapped hidden states
    embeds: jax.Array | None  # input embeddings of this forward


class ThinkerEngine:
    """Greedy or sampled text generation with the Thinker's text model (params: pure dict of ``thinker.text``)."""

    def __init__(self, cfg: OmniConfig, text_params: dict, opts: StackOptions | None = None):
        self.cfg = cfg
        self.text_cfg = cfg.thinker.text
        self.params = text_params
        self.opts = opts or StackOptions.uniform(self.text_cfg)
        self.dtype = jnp.asarray(text_params["embed"]).dtype

    def cache_size(self, prompt_len: int, max_new_tokens: int) -> int:
        return cache_size_for(self.text_cfg, prompt_len, max_new_tokens)

    def stream(self, prompt: PreparedPrompt, max_new_tokens: int, sampling: SamplingConfig, eos_ids: set[int],
               seed: int = 0, opts: StackOptions | None = None) -> Iterator[StepRecord]:
        """Yield one StepRecord per generated position (the prefill's first token, then each step's)."""
        opts = opts or self.opts
        b = prompt.batch
        cache = KVCache.create(self.text_cfg, b, self.cache_size(prompt.length, max_new_tokens), self.dtype)
        embeds = prompt.inputs_embeds
        if embeds is None:
            embeds = _embed(self.params, jnp.asarray(prompt.input_ids))
        logits, cache, stats, taps = _prefill(self.params, self.text_cfg, opts, embeds,
                                              *on_mesh((prompt.position_ids, prompt.attention_mask)),
                                              cache, prompt.deepstack)
        key = on_mesh(jax.random.key(seed))
        v = self.text_cfg.vocab_size
        seen = np.zeros((b, v), bool)
        if sampling.repetition_penalty != 1.0:
            seen[np.arange(b)[:, None], np.asarray(prompt.input_ids)] = np.asarray(prompt.attention_mask).astype(bool)
        seen = on_mesh(seen)
        key, sub = jax.random.split(key)
        tokens = _sample(logits, sub, sampling, seen=seen)
        positions = on_mesh(np.asarray(prompt.attention_mask.sum(-1) + prompt.rope_deltas, np.float32))
        done = np.zeros(b, bool)
        for step in range(max_new_tokens):
            host_tokens = to_host(tokens)
            yield StepRecord(host_tokens, stats, taps, embeds)
            done |= np.isin(host_tokens, list(eos_ids))
            if done.all() or step == max_new_tokens - 1:
                return
            seen = seen.at[jnp.arange(b), tokens].set(True)
            logits, cache, stats, taps, embeds = _step(self.params, self.text_cfg, opts, tokens, positions, cache)
            positions = positions + 1
            key, sub = jax.random.split(key)
            tokens = _sample(logits, sub, sampling, seen=seen)

    def generate(self, prompt: PreparedPrompt, max_new_tokens: int, sampling: SamplingConfig, eos_ids: set[int],
                 seed: int = 0, on_tokens: Callable[[np.ndarray], None] | None = None,
                 opts: StackOptions | None = None) -> list[list[int]]:
        """Generated ids per row, each ending at (and including) its first EOS, as HF's sequences do."""
        out = [[] for _ in range(prompt.batch)]
        finished = [False] * prompt.batch
        for rec in self.stream(prompt, max_new_tokens, sampling, eos_ids, seed, opts):
            for i, t in enumerate(rec.tokens):
                if not finished[i]:
                    out[i].append(int(t))
                    finished[i] = int(t) in eos_ids
            if on_tokens is not None:
                on_tokens(rec.tokens)
        return out


def compile_count() -> dict[str, int]:
    """Number of compiled variants of the prefill and step functions (for no-recompilation tests)."""
    return {"prefill": _prefill._cache_size(), "step": _step._cache_size()}
