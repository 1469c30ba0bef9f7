"""Reasoning and answer of a thinking model's output, split at ``<think>`` ... ``</think>``.

The Thinking release writes its reasoning between ``<think>`` and ``</think>`` and then the answer. Serving
stacks' Qwen3 reasoning parsers return the two apart, and so does this module, on token ids (both tags are
single tokens of the Qwen tokenizer):

- ``</think>`` in the output: the reasoning is what comes before it (after a ``<think>`` when the output opens
  with one; without it, the chat template opened the reasoning in the prompt), the answer what follows;
- no ``</think>``, but the reasoning was opened (a ``<think>`` in the output, or one left open at the end of the
  prompt): generation stopped while reasoning: everything is reasoning, the answer is empty;
- neither: there is no reasoning (None), everything is the answer (an Instruct or Captioner model).

As the chat template does when it renders an assistant turn back, newlines around the reasoning and at the
start of the answer are stripped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class ReasoningTags:
    start: int | None  # the <think> token id, None when the tokenizer has none
    end: int | None  # the </think> token id

    @classmethod
    def of(cls, tokenizer) -> "ReasoningTags":
        return cls(tokenizer.token_to_id("<think>"), tokenizer.token_to_id("</think>"))

    @property
    def usable(self) -> bool:
        return self.start is not None and self.end is not None

    def opened_in_prompt(self, prompt_ids: Sequence[int], im_start_id: int) -> bool:
        """The prompt's last turn (after its last ``<|im_start|>``) leaves a ``<think>`` open."""
        if not self.usable:
            return False
        ids = [int(t) for t in prompt_ids]
        turn = max((i for i, t in enumerate(ids) if t == im_start_id), default=-1)
        state = False
        for t in ids[turn + 1:]:
            if t == self.start:
                state = True
            elif t == self.end:
                state = False
        return state

    def split(self, ids: Sequence[int], opened: bool = False) -> tuple[list[int] | None, list[int]]:
        """(reasoning ids or None, answer ids) of generated ``ids`` (EOS removed); ``opened``: the prompt left a
        ``<think>`` open."""
        ids = [int(t) for t in ids]
        if not self.usable:
            return None, ids
        if self.end in ids:
            cut = ids.index(self.end)
            reasoning, answer = ids[:cut], ids[cut + 1:]
            if self.start in reasoning:
                reasoning = reasoning[reasoning.index(self.start) + 1:]
            return reasoning, answer
        if self.start in ids:
            return ids[ids.index(self.start) + 1:], []
        if opened:
            return ids, []
        return None, ids


def split_text(tokenizer, ids: Sequence[int], tags: ReasoningTags, opened: bool = False) -> tuple[str | None, str]:
    """(reasoning text or None, answer text), decoded without special tokens."""
    reasoning, answer = tags.split(ids, opened)
    text = tokenizer.decode(answer, skip_special_tokens=True)
    if reasoning is None:
        return None, text
    return tokenizer.decode(reasoning, skip_special_tokens=True).strip("\n"), text.lstrip("\n")
