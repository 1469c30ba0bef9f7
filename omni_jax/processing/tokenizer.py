"""The Qwen2 byte-level BPE tokenizer of Qwen3-Omni, built on the `tokenizers` library.

`Tokenizer.from_dir` reads a checkpoint directory the way transformers' `Qwen2Tokenizer` does: `tokenizer.json` when
present, else `vocab.json` + `merges.txt` + `tokenizer_config.json` (added tokens from `added_tokens_decoder`), with
NFC normalisation, the Qwen2 pre-tokenizer split regex, byte-level BPE, and added tokens that are never split.
`StreamDecoder` turns generated ids into text deltas that are always complete UTF-8.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any, Iterable

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers.models import BPE

from omni_jax.errors import InputFileError

# transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# The named special tokens a tokenizer config may set, with Qwen2Tokenizer's defaults for absent keys.
NAMED_SPECIAL_TOKEN_DEFAULTS = {
    "bos_token": None, "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "sep_token": None,
    "pad_token": "<|endoftext|>", "cls_token": None, "mask_token": None,
}
# Qwen3-Omni control tokens by short name (ids 151643-151675 in the real vocabulary).
OMNI_SPECIAL_TOKENS = {
    "endoftext": "<|endoftext|>", "im_start": "<|im_start|>", "im_end": "<|im_end|>",
    "vision_start": "<|vision_start|>", "vision_end": "<|vision_end|>", "image_pad": "<|image_pad|>",
    "video_pad": "<|video_pad|>", "audio_start": "<|audio_start|>", "audio_end": "<|audio_end|>",
    "audio_pad": "<|audio_pad|>", "tts_pad": "<tts_pad>", "tts_bos": "<tts_text_bos>", "tts_eos": "<tts_text_eod>",
    "tts_bos_single": "<tts_text_bos_single>", "think_start": "<think>", "think_end": "</think>",
}


class TokenizerFileError(InputFileError):
    """A tokenizer file is missing, unreadable or malformed (the message names the file)."""


def _fail(path: Path, problem: str) -> TokenizerFileError:
    return TokenizerFileError(f"{path}: {problem}")


def read_text_file(path: Path) -> str:
    if not path.is_file():
        raise _fail(path, "file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise _fail(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise _fail(path, f"cannot read ({err.strerror})") from None


def read_json_file(path: Path, expect: type = dict) -> Any:
    text = read_text_file(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise _fail(path, f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(value, expect):
        raise _fail(path, f"expected a JSON {expect.__name__}, got {type(value).__name__}")
    return value


def read_tokenizer_config(model_dir: str | Path, required: bool = False) -> dict:
    """`tokenizer_config.json` of a checkpoint directory ({} when absent and not required)."""
    path = Path(model_dir) / "tokenizer_config.json"
    if not required and not path.exists():
        return {}
    return read_json_file(path)


def _token_content(value: Any) -> str | None:
    # Named special tokens are stored as a string or as a serialised AddedToken {"content": ..., ...}.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def special_tokens_map(config: dict) -> dict[str, str]:
    """The named special tokens (bos/eos/unk/pad/...) set by a tokenizer config, as transformers'
    `Qwen2Tokenizer.special_tokens_map` gives them (Qwen2Tokenizer's defaults where a key is absent)."""
    named = {}
    for key, default in NAMED_SPECIAL_TOKEN_DEFAULTS.items():
        content = _token_content(config[key]) if key in config else default
        if content is not None:
            named[key] = content
    # model-specific named tokens (image_token, audio_bos_token, ...) that transformers also exposes
    for key, value in config.items():
        if key.endswith("_token") and key not in NAMED_SPECIAL_TOKEN_DEFAULTS:
            content = _token_content(value)
            if content is not None:
                named[key] = content
    return named


def _read_vocab(path: Path) -> dict[str, int]:
    vocab = read_json_file(path)
    if not vocab:
        raise _fail(path, "empty vocabulary")
    if not all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in vocab.items()):
        raise _fail(path, "expected a JSON object mapping token strings to non-negative integer ids")
    if len(set(vocab.values())) != len(vocab):
        raise _fail(path, "two tokens share an id")
    return vocab


def _read_merges(path: Path, vocab: dict[str, int]) -> list[tuple[str, str]]:
    # Same format as tokenizers' BPE merges reader: an optional "#version" line, then "left right" per line.
    merges = []
    for line_no, line in enumerate(read_text_file(path).split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.startswith("#version") or not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise _fail(path, f"line {line_no} is not a merge of two tokens: {line[:60]!r}")
        if parts[0] + parts[1] not in vocab:
            raise _fail(path, f"line {line_no} merges into {parts[0] + parts[1]!r}, which is not in vocab.json")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise _fail(path, "no merges")
    return merges


def _added_tokens(config_path: Path, config: dict) -> list[tuple[int, AddedToken]]:
    """`added_tokens_decoder` as (id, AddedToken) sorted by id, plus named/additional special tokens not in it."""
    decoder = config.get("added_tokens_decoder", {})
    if not isinstance(decoder, dict):
        raise _fail(config_path, "added_tokens_decoder is not a JSON object")
    added = []
    for key, spec in decoder.items():
        if not (key.isdigit() and isinstance(spec, dict) and isinstance(spec.get("content"), str) and spec["content"]):
            raise _fail(config_path, f"added_tokens_decoder entry {key!r} needs an integer id and a 'content' string")
        flags = {k: bool(spec[k]) for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in spec}
        added.append((int(key), AddedToken(spec["content"], **flags)))
    added.sort(key=lambda pair: pair[0])
    known = {token.content for _, token in added}
    extra_names = list(special_tokens_map(config).values())
    for key in ("additional_special_tokens", "extra_special_tokens"):
        if isinstance(config.get(key), list):
            extra_names += [c for c in map(_token_content, config[key]) if c is not None]
    for name in extra_names:
        if name not in known:
            known.add(name)
            added.append((-1, AddedToken(name, special=True, normalized=False)))
    return added


def build_qwen2_backend(model_dir: Path) -> BackendTokenizer:
    """The Qwen2Tokenizer pipeline of transformers over vocab.json + merges.txt + tokenizer_config.json."""
    config_path = model_dir / "tokenizer_config.json"
    config = read_json_file(config_path)
    vocab = _read_vocab(model_dir / "vocab.json")
    merges = _read_merges(model_dir / "merges.txt", vocab)
    backend = BackendTokenizer(BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                                   continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                                   byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)), use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    for token_id, token in _added_tokens(config_path, config):
        backend.add_tokens([token])
        got = backend.token_to_id(token.content)
        if token_id >= 0 and got != token_id:
            raise _fail(config_path, f"added token {token.content!r} has id {token_id} but would get id {got} "
                                     "(added ids must follow the vocabulary without gaps)")
    return backend


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2 byte-level alphabet (same table as tokenizers' ByteLevel): printable bytes map to themselves.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


_CHAR_TO_BYTE = {char: byte for byte, char in _bytes_to_unicode().items()}


def token_bytes(token: str) -> bytes:
    """The bytes the ByteLevel decoder gives for one token string (added tokens outside the alphabet: their UTF-8)."""
    try:
        return bytes(_CHAR_TO_BYTE[char] for char in token)
    except KeyError:
        return token.encode("utf-8")


class Tokenizer:
    """Qwen2/Qwen3-Omni tokenizer: `encode`, `decode`, `stream_decoder`, special-token ids."""

    def __init__(self, backend: BackendTokenizer, config: dict, source: Path):
        if not isinstance(backend.decoder, decoders.ByteLevel):
            raise _fail(source, f"expected a ByteLevel decoder (Qwen2 byte-level BPE), got {backend.decoder!r}")
        self.backend = backend
        self.config = config
        self.source = source
        self.special_tokens_map = special_tokens_map(config)
        added = backend.get_added_tokens_decoder()
        self.special_ids = frozenset(i for i, token in added.items() if token.special)
        self._bytes_cache: dict[int, bytes] = {}

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "Tokenizer":
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise _fail(model_dir, "not a directory")
        fast_file = model_dir / "tokenizer.json"
        if fast_file.exists():
            read_json_file(fast_file)  # a clear error for unreadable or non-JSON files
            try:
                backend = BackendTokenizer.from_file(str(fast_file))
            except Exception as err:  # tokenizers raises a bare Exception on malformed specs
                raise _fail(fast_file, f"not a valid tokenizers file ({str(err).splitlines()[0]})") from None
            return cls(backend, read_tokenizer_config(model_dir), fast_file)
        return cls(build_qwen2_backend(model_dir), read_tokenizer_config(model_dir, required=True), model_dir)

    # --- vocabulary -------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids including added tokens (= len(hf_tokenizer)); embeddings need at least this many rows."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def base_vocab_size(self) -> int:
        """Number of BPE ids without added tokens (= hf_tokenizer.vocab_size)."""
        return self.backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def _named_id(self, key: str) -> int | None:
        token = self.special_tokens_map.get(key)
        return None if token is None else self.token_to_id(token)

    @property
    def pad_id(self) -> int | None:
        return self._named_id("pad_token")

    @property
    def eos_id(self) -> int | None:
        return self._named_id("eos_token")

    @property
    def special_token_ids(self) -> dict[str, int]:
        """Qwen3-Omni control-token ids by short name (`OMNI_SPECIAL_TOKENS`), for those this vocabulary has."""
        ids = {name: self.token_to_id(token) for name, token in OMNI_SPECIAL_TOKENS.items()}
        return {name: i for name, i in ids.items() if i is not None}

    @property
    def im_start_id(self) -> int:
        return self.special_token_ids["im_start"]

    @property
    def im_end_id(self) -> int:
        return self.special_token_ids["im_end"]

    @property
    def endoftext_id(self) -> int:
        return self.special_token_ids["endoftext"]

    # --- encode / decode ----------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; added tokens written in the text are matched as single tokens, never split."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int, skip_special_tokens: bool = False) -> bytes:
        """The bytes one id contributes to `decode` (b"" for unknown ids and, if asked, for special tokens)."""
        if skip_special_tokens and token_id in self.special_ids:
            return b""
        cached = self._bytes_cache.get(token_id)
        if cached is None:
            token = self.backend.id_to_token(token_id)
            cached = self._bytes_cache[token_id] = b"" if token is None else token_bytes(token)
        return cached

    def stream_decoder(self, skip_special_tokens: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, skip_special_tokens)


class StreamDecoder:
    """Incremental detokenizer: feed ids, get only the new, complete text.

    Bytes of a character split across tokens (CJK, emoji, ZWJ parts) are held back until the character is complete,
    so no replacement character is ever printed for a split character. Invalid bytes become U+FFFD exactly as in
    `Tokenizer.decode`; `finish()` flushes an incomplete tail the same way. The concatenation of all deltas equals
    `tokenizer.decode(all_ids, skip_special_tokens)`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one id; returns the text it completes ('' while a character is still incomplete)."""
        return self._utf8.decode(self.tokenizer.token_bytes(int(token_id), self.skip_special_tokens))

    def push_many(self, ids: Iterable[int]) -> str:
        return "".join(self.push(i) for i in ids)

    def finish(self) -> str:
        """End of stream: returns what is left (U+FFFD for an incomplete trailing byte sequence) and resets."""
        tail = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return tail
