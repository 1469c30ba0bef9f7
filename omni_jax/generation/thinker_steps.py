"""The Thinker's generation steps: prefill, one decode step, and the decode loop, as jitted pure functions.

Every generator of text is built from these: the streaming ``ThinkerEngine`` (a Python loop of
``thinker_decode_step``, one host round trip per token), the fused one-program generate (``decode_loop`` inside
its own jit) and the distillation sampler (``decode_loop``). Each step samples its token inside the same
program as the forward (HF's logits-processor order, ``omni_jax.generation.sampling``), so a step is one
compiled call; the KV cache, the repetition-penalty mask, the decode positions and the PRNG key are created
in the prefill and carried in a ``ThinkerState``.

Keys: the prefill turns ``key`` (a seed or a PRNG key) into ``k``, splits it once for the first token; every
step splits again (``k, sub = split(k)``; the token is drawn with ``sub``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from omni_jax.config import TextConfig
from omni_jax.executables import program
from omni_jax.generation.sampling import SamplingConfig, sample
from omni_jax.models import thinker_text
from omni_jax.models.decoder import KVCache, StackOptions
from omni_jax.sharding import constrain_cache, replicated


@jax.tree_util.register_dataclass
@dataclass
class ThinkerState:
    """What one decode step needs from the previous one (all device arrays)."""

    tokens: jax.Array  # [B] int32: the tokens sampled last (the next step's input)
    cache: KVCache
    seen: jax.Array  # [B, V] bool: tokens of the prompt and of the generation (repetition penalty)
    positions: jax.Array  # [B] float32: the position of ``tokens``
    key: jax.Array  # PRNG key


def decode_start_positions(attention_mask, rope_deltas):
    """[B] float32 position of the first generated token: real prompt tokens + the prompt's rope delta."""
    return (attention_mask.sum(-1) + rope_deltas.reshape(-1)).astype(jnp.float32)


def _as_key(key):
    return key if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.key(key)


@program(static_argnames=("cfg", "opts", "sampling", "cache_size"))
def thinker_prefill(params: dict, cfg: TextConfig, opts: StackOptions, sampling: SamplingConfig, cache_size: int,
                    input_ids, attention_mask, position_ids, rope_deltas, key, inputs_embeds=None, deepstack=None):
    """The prompt [B, P] (left-padded) into a fresh KV cache of ``cache_size`` slots, and the first token.

    inputs_embeds [B, P, H] (multimodal prompts; else the token embeddings of ``input_ids``); deepstack
    [n, B, P, H] or None; key: a uint32 seed or a PRNG key. Returns (ThinkerState, dict(stats, hidden_states,
    embeds)): ``hidden_states`` holds the ``opts.taps``, ``embeds`` the prompt's input embeddings."""
    b = input_ids.shape[0]
    embeds = thinker_text.embed_tokens(params, input_ids) if inputs_embeds is None else inputs_embeds
    cache = KVCache.create(cfg, b, cache_size, embeds.dtype)
    out = thinker_text.text_forward(params, cfg, opts, embeds, position_ids, attention_mask, cache=cache,
                                    deepstack=deepstack, logits_at="last")
    seen = jnp.zeros((b, cfg.vocab_size), bool)
    if sampling.repetition_penalty != 1.0:
        seen = seen.at[jnp.arange(b)[:, None], input_ids].set(attention_mask.astype(bool))
    key, sub = jax.random.split(_as_key(key))
    tokens = sample(out["logits"][:, -1], sub, sampling, seen=seen)
    return _outputs(tokens, out["cache"], seen, decode_start_positions(attention_mask, rope_deltas), key,
                    dict(stats=out["stats"], hidden_states=out["hidden_states"], embeds=embeds))


def _outputs(tokens, cache, seen, positions, key, extras):
    """The step's results in fixed layouts on a context mesh: the cache as created, everything else replicated
    (every process reads the same tokens; the next step sees the layouts this one saw, so it compiles once)."""
    tokens, seen, positions, key, extras = replicated((tokens, seen, positions, key, extras))
    return ThinkerState(tokens, constrain_cache(cache), seen, positions, key), extras


@program(static_argnames=("cfg", "opts", "sampling"), donate_argnames=("state",))
def thinker_decode_step(params: dict, cfg: TextConfig, opts: StackOptions, sampling: SamplingConfig,
                        state: ThinkerState):
    """Feed ``state.tokens`` (one per row) at ``state.positions`` and sample the next tokens.

    Returns (ThinkerState, dict(stats, hidden_states, embeds [B, 1, H] of the fed tokens)); ``state`` is donated."""
    b = state.tokens.shape[0]
    seen = state.seen
    if sampling.repetition_penalty != 1.0:
        seen = seen.at[jnp.arange(b), state.tokens].set(True)
    emb = thinker_text.embed_tokens(params, state.tokens[:, None])
    pos = jnp.broadcast_to(state.positions[None, :, None], (3, b, 1))
    mask = jnp.ones((b, 1), jnp.int32)
    out = thinker_text.text_forward(params, cfg, opts, emb, pos, mask, cache=state.cache, logits_at="last")
    key, sub = jax.random.split(state.key)
    tokens = sample(out["logits"][:, -1], sub, sampling, seen=seen)
    return _outputs(tokens, out["cache"], seen, state.positions + 1, key,
                    dict(stats=out["stats"], hidden_states=out["hidden_states"], embeds=emb))


def decode_loop(params: dict, cfg: TextConfig, opts: StackOptions, sampling: SamplingConfig, state: ThinkerState,
                n_new: int, eos_ids: tuple[int, ...] = ()):
    """``thinker_decode_step`` under ``lax.while_loop`` (traceable; call it inside a jit) until every row has
    sampled an EOS or ``n_new`` tokens exist (the prefill's token included).

    Returns (tokens [n_new, B] int32, -1 after the loop stopped; records: the number of tokens made (as the
    streaming engine's records); counts [layers, experts]: the decode steps' expert counts, summed)."""
    b = state.tokens.shape[0]
    opts = dataclasses.replace(opts, taps=())
    buf = jnp.full((n_new, b), -1, jnp.int32).at[0].set(state.tokens)
    counts = jnp.zeros((cfg.num_layers, cfg.num_experts), jnp.int32)

    def finished(tokens):
        return jnp.isin(tokens, jnp.asarray(eos_ids, jnp.int32)) if eos_ids else jnp.zeros(tokens.shape, bool)

    def cond(carry):
        step, _, done, _, _ = carry
        return (step < n_new - 1) & ~jnp.all(done)

    def body(carry):
        step, state, done, buf, counts = carry
        state, out = thinker_decode_step(params, cfg, opts, sampling, state)
        return (step + 1, state, done | finished(state.tokens), buf.at[step + 1].set(state.tokens),
                counts + out["stats"].counts)

    carry = (jnp.asarray(0, jnp.int32), state, finished(state.tokens), buf, counts)
    step, _, _, buf, counts = jax.lax.while_loop(cond, body, carry)
    return buf, step + 1, counts
