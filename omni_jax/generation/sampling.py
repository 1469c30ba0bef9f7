"""Token sampling with HF's logits-processor order: repetition penalty, suppressed tokens, then (when
sampling) temperature, top-k, top-p, and a categorical draw. Pure functions, jit-friendly, explicit keys."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from omni_jax.errors import UsageError


@dataclass(frozen=True)
class SamplingConfig:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if self.temperature <= 0:
            raise UsageError(f"temperature must be > 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"top_k must be >= 1, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise UsageError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @classmethod
    def greedy(cls, repetition_penalty: float = 1.0) -> "SamplingConfig":
        return cls(do_sample=False, repetition_penalty=repetition_penalty)


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
    """HF RepetitionPenaltyLogitsProcessor: seen tokens' logits divided (if > 0) or multiplied by the penalty."""
    if penalty == 1.0:
        return logits
    penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalised, logits)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    k = min(k, logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """HF TopPLogitsWarper: drop the lowest-probability tokens whose cumulative mass is <= 1 - p (keep >= 1)."""
    order = jnp.argsort(logits, axis=-1)  # ascending
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove_sorted = cum <= (1 - p)
    remove_sorted = remove_sorted.at[..., -1].set(False)
    remove = jnp.zeros_like(remove_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(remove_sorted)
    return jnp.where(remove, -jnp.inf, logits)


def sample(logits: jax.Array, key: jax.Array, cfg: SamplingConfig, seen: jax.Array | None = None,
           suppress: jax.Array | None = None) -> jax.Array:
    """logits [B, V] -> token ids [B] (int32). seen [B, V] bool for the repetition penalty; suppress [V] bool."""
    logits = logits.astype(jnp.float32)
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
    if suppress is not None:
        logits = jnp.where(suppress[None], -jnp.inf, logits)
    if not cfg.do_sample:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / cfg.temperature
    if cfg.top_k is not None:
        logits = top_k_filter(logits, cfg.top_k)
    if cfg.top_p is not None and cfg.top_p < 1.0:
        logits = top_p_filter(logits, cfg.top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
