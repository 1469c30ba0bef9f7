"""Text sets for experiments: JSONL files of ``{"text": ...}`` lines, tokenized into right-padded batches.

A small built-in eval set and calibration set ship with the package so every experiment runs out of the box;
give your own with ``[eval] path = "my_eval.jsonl"`` (``[calibration] path = ...``) in the experiment file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omni_jax.errors import InputFileError

DATA = Path(__file__).parent / "data"
DEFAULT_EVAL = DATA / "eval_default.jsonl"
DEFAULT_CALIBRATION = DATA / "calibration_default.jsonl"


class EvalSetError(InputFileError):
    """An unreadable or malformed text set."""


@dataclass
class EvalSet:
    texts: list[str]
    input_ids: np.ndarray  # [N, L] int32, right-padded with 0
    attention_mask: np.ndarray  # [N, L] int32 (1 = real token)
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def batches(self, batch_size: int):
        """(input_ids, attention_mask) chunks of ``batch_size`` rows; the last is padded with empty rows
        (mask 0) so every batch has one shape."""
        n = len(self)
        for s in range(0, n, batch_size):
            ids, mask = self.input_ids[s:s + batch_size], self.attention_mask[s:s + batch_size]
            if len(ids) < batch_size:
                pad = batch_size - len(ids)
                ids = np.concatenate([ids, np.zeros((pad, ids.shape[1]), ids.dtype)])
                mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), mask.dtype)])
            yield ids, mask


def read_texts(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EvalSetError(f"{path}: cannot read the text set ({e.__class__.__name__}: {e})") from None
    texts = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalSetError(f"{path}:{i}: not a JSON line ({e.msg})") from None
        text = item.get("text") if isinstance(item, dict) else None
        if not isinstance(text, str) or not text:
            raise EvalSetError(f"{path}:{i}: expected an object with a non-empty \"text\" string")
        texts.append(text)
    if not texts:
        raise EvalSetError(f"{path}: no texts")
    return texts


def tokenize_set(tokenizer, texts: list[str], max_tokens: int, source: str = "") -> EvalSet:
    """Tokenize texts (truncated to ``max_tokens``), right-pad to the longest (rounded up to 8)."""
    ids = [tokenizer.encode(t)[:max_tokens] for t in texts]
    ids = [s for s in ids if len(s) >= 2]
    if not ids:
        raise EvalSetError(f"{source}: every text is shorter than 2 tokens")
    length = -(-max(len(s) for s in ids) // 8) * 8
    out = np.zeros((len(ids), length), np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for i, s in enumerate(ids):
        out[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return EvalSet(texts, out, mask, source)


def load_set(tokenizer, path: str | Path | None, default: Path, max_examples: int, max_tokens: int) -> EvalSet:
    path = Path(path) if path else default
    texts = read_texts(path)[:max_examples]
    return tokenize_set(tokenizer, texts, max_tokens, str(path))
