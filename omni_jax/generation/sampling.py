"""Token sampling with HF's logits-processor order: repetition penalty, suppressed tokens, then (when
sampling) temperature, top-k, top-p, and a categorical draw. Pure functions, jit-friendly, explicit keys.
The logits processors themselves live in ``omni_jax.ops.logits`` (the code predictor samples with them too)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from omni_jax.errors import UsageError
from omni_jax.ops.logits import apply_repetition_penalty, top_k_filter, top_p_filter

__all__ = ["SamplingConfig", "apply_repetition_penalty", "sample", "top_k_filter", "top_p_filter"]


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
