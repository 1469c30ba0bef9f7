"""The Thinker's input batch: a left-padded prompt ready for prefill, and the bucketing that keeps its shapes few.

Prompts are left-padded to a multiple of ``PROMPT_BUCKET`` tokens, so a second prompt of a similar length
reuses the compiled prefill. ``PreparedPrompt`` is what the processors produce (token ids, mask, TM-RoPE
position ids, and for multimodal prompts the merged input embeddings and the deepstack payload) and what the
generation engines consume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import numpy as np

PROMPT_BUCKET = 32


def round_up(n: int, m: int) -> int:
    """The smallest multiple of ``m`` that is >= n (and at least m)."""
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

