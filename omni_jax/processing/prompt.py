"""Messages -> token ids: chat template, placeholder expansion, left-padded batch, position ids.

This is the job of HF's ``Qwen3OmniMoeProcessor`` (reference notes §11) for the text side. Media items are
turned into features by ``omni_jax.processing.media`` and expand their single placeholder token into the
number of tokens their encoder produces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from omni_jax.config import OmniConfig
from omni_jax.generation.thinker_engine import PROMPT_BUCKET, PreparedPrompt, pad_left
from omni_jax.positions import RopeIndexConfig, get_rope_index
from omni_jax.processing.chat import ChatTemplate
from omni_jax.processing.tokenizer import Tokenizer


@dataclass
class TextProcessor:
    """Tokenizer + chat template of a checkpoint directory."""

    tokenizer: Tokenizer
    template: ChatTemplate
    cfg: OmniConfig

    @classmethod
    def from_dir(cls, directory: str | Path, cfg: OmniConfig) -> "TextProcessor":
        return cls(Tokenizer.from_dir(directory), ChatTemplate.from_dir(directory), cfg)

    def render(self, messages: list[dict]) -> str:
        return self.template.render(messages, add_generation_prompt=True)

    def eos_ids(self) -> set[int]:
        return {self.cfg.im_end_token_id}


@dataclass
class MediaPlan:
    """Per-prompt expansion counts for placeholders, in order of appearance (filled by the media pipeline)."""

    image_tokens: list[int] = field(default_factory=list)
    audio_tokens: list[int] = field(default_factory=list)
    video_tokens: list[int] = field(default_factory=list)


def expand_placeholders(ids: list[int], cfg: OmniConfig, plan: MediaPlan) -> list[int]:
    """Replace each single image/audio/video placeholder token by its encoder's token count."""
    t = cfg.thinker
    counts = {t.image_token_id: list(plan.image_tokens), t.audio_token_id: list(plan.audio_tokens),
              t.video_token_id: list(plan.video_tokens)}
    out: list[int] = []
    for tok in ids:
        if tok in counts:
            if not counts[tok]:
                raise ValueError(f"the prompt has more {'image' if tok == t.image_token_id else 'audio' if tok == t.audio_token_id else 'video'} "
                                 "placeholders than media items")
            out.extend([tok] * counts[tok].pop(0))
        else:
            out.append(tok)
    return out


def prepare_text_batch(processor: TextProcessor, conversations: Sequence[list[dict]],
                       bucket: int = PROMPT_BUCKET) -> PreparedPrompt:
    """Text-only conversations -> a left-padded PreparedPrompt with HF's text-branch position ids."""
    seqs = [processor.tokenizer.encode(processor.render(m)) for m in conversations]
    ids, mask = pad_left(seqs, processor.cfg.pad_token_id, bucket)
    pos, deltas = get_rope_index(ids, mask, cfg=RopeIndexConfig.from_thinker(processor.cfg.thinker))
    return PreparedPrompt(ids, mask, pos, deltas.reshape(-1))
