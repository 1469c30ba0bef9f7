"""Messages -> token ids: chat template, placeholder expansion, left-padded batch, position ids.

This is the job of HF's ``Qwen3OmniMoeProcessor`` for text-only prompts; prompts with
images, audio or video go through ``omni_jax.processing.multimodal.MultimodalProcessor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


from omni_jax.config import OmniConfig
from omni_jax.models.prompt import PROMPT_BUCKET, PreparedPrompt, pad_left
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


def prepare_text_batch(processor: TextProcessor, conversations: Sequence[list[dict]],
                       bucket: int = PROMPT_BUCKET) -> PreparedPrompt:
    """Text-only conversations -> a left-padded PreparedPrompt with HF's text-branch position ids."""
    seqs = [processor.tokenizer.encode(processor.render(m)) for m in conversations]
    ids, mask = pad_left(seqs, processor.cfg.pad_token_id, bucket)
    pos, deltas = get_rope_index(ids, mask, cfg=RopeIndexConfig.from_thinker(processor.cfg.thinker))
    return PreparedPrompt(ids, mask, pos, deltas.reshape(-1))
