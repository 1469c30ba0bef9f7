"""The Thinker's streaming engine: a jitted prefill into a preallocated KV cache, then one jitted step per token.

Shapes are static per bucket: prompts are left-padded to a multiple of ``PROMPT_BUCKET`` tokens and the
cache holds ``bucket + max_new_tokens`` rounded up to ``CACHE_BUCKET`` slots, so a second prompt of a
similar length reuses the compiled functions, and decoding never recompiles (one step function per
bucket). The Python loop over steps is what makes streaming possible; each step is one jitted call
(``omni_jax.generation.thinker_steps``: forward and sampling in one program).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.errors import UsageError
from omni_jax.config import OmniConfig, TextConfig
from omni_jax.generation.ahead import committed, wait_for
from omni_jax.generation.sampling import SamplingConfig
from omni_jax.generation.thinker_steps import thinker_decode_step, thinker_prefill
from omni_jax.models import thinker_text
from omni_jax.models.decoder import StackOptions
from omni_jax.models.prompt import PROMPT_BUCKET, PreparedPrompt, pad_left, round_up  # noqa: F401  (re-exported)
from omni_jax.sharding import to_host

CACHE_BUCKET = 128


class PromptTooLongError(UsageError):
    """The prompt plus the requested new tokens do not fit the model's context."""


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
        self.params = thinker_text.with_decode_views(text_params)  # per-layer weights read in place on CPU
        self.opts = opts or StackOptions.uniform(self.text_cfg)
        self.dtype = jnp.asarray(text_params["embed"]).dtype

    def cache_size(self, prompt_len: int, max_new_tokens: int) -> int:
        return cache_size_for(self.text_cfg, prompt_len, max_new_tokens)

    def stream(self, prompt: PreparedPrompt, max_new_tokens: int, sampling: SamplingConfig, eos_ids: set[int],
               seed: int = 0, opts: StackOptions | None = None) -> Iterator[StepRecord]:
        """Yield one StepRecord per generated position (the prefill's first token, then each step's)."""
        opts = opts or self.opts
        state, out = thinker_prefill(self.params, self.text_cfg, opts, sampling,
                                     self.cache_size(prompt.length, max_new_tokens), prompt.input_ids,
                                     prompt.attention_mask, prompt.position_ids, prompt.rope_deltas, np.uint32(seed),
                                     prompt.inputs_embeds, prompt.deepstack)
        step_opts = dataclasses.replace(opts, taps=())  # the tapped states are read from the prompt only
        eos = list(eos_ids)
        done = np.zeros(prompt.batch, bool)
        for step in range(max_new_tokens):
            host_tokens = to_host(state.tokens)
            yield StepRecord(host_tokens, out["stats"], out["hidden_states"], out["embeds"])
            done |= np.isin(host_tokens, eos)
            if done.all() or step == max_new_tokens - 1:
                return
            if step == 0:
                wait_for("thinker_decode_step")
            state, out = thinker_decode_step(self.params, self.text_cfg, step_opts, sampling, state)

    def compile_ahead_jobs(self, prompt: PreparedPrompt, max_new_tokens: int, sampling: SamplingConfig,
                           opts: StackOptions | None = None) -> list:
        """The compile-ahead job (``omni_jax.generation.ahead``) of the decode step ``stream`` will run for a prompt
        like ``prompt`` (``inputs_embeds`` / ``deepstack`` may be ShapeDtypeStructs)."""
        opts = opts or self.opts
        cache_size = self.cache_size(prompt.length, max_new_tokens)

        def job():
            state, _ = thinker_prefill.out_shapes(
                self.params, self.text_cfg, opts, sampling, cache_size, prompt.input_ids, prompt.attention_mask,
                prompt.position_ids, prompt.rope_deltas, np.uint32(0), prompt.inputs_embeds, prompt.deepstack)
            thinker_decode_step.prepare(self.params, self.text_cfg, dataclasses.replace(opts, taps=()), sampling,
                                        committed(state))

        return [("thinker_decode_step", job)]

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
    return {"prefill": thinker_prefill.cache_size(), "step": thinker_decode_step.cache_size()}
