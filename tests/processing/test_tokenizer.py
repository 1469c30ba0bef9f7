"""omni_jax Tokenizer against transformers' Qwen2Tokenizer (transformers 5: the `tokenizers`-backed class) built from the
same real Qwen3-Omni tokenizer files: ids, decode, streaming decode, tokenizer.json loading and file errors."""

import json
import random
import shutil
import unicodedata

import pytest
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

from omni_jax.processing.assets import copy_tokenizer_files
from omni_jax.processing.tokenizer import (
    OMNI_SPECIAL_TOKENS,
    Tokenizer,
    TokenizerFileError,
    build_qwen2_backend,
)

TEXTS = [
    "",
    "Hello, world! I'm sure THEY'LL say we've done it; can't we?",
    "你好，世界！今天天气很好。我们来测试一下分词器的效果，包括生僻字：龘靐齉。",
    "東京は日本の首都です。カタカナとひらがな、漢字を混ぜた文章。ｶﾀｶﾅ（半角）",
    "안녕하세요 세계. Привет, мир! مرحبا بالعالم नमस्ते दुनिया สวัสดีชาวโลก",
    "def f(x):\n\tif x:\n\t\treturn  x ** 2   \n\n\n    else:\r\n        pass\t \t\n",
    "   leading spaces, trailing spaces   \n\n   \t\t  ",
    "3.14159 1,234,567 2024-01-01T12:00:00Z 0x1F 1e-10 ١٢٣ ½ ²³ 10000000000000000",
    "emoji 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵🇫🇷 ❤️ 🫠 a👩🏾‍💻b",
    "combining e\u0301 a\u0308 n\u0303 A\u030a \u1100\u1161 ﬁ Ω Å café cafe\u0301",
    "Mixed 中文 and English 和日本語、😀 code `x = [1, 2, 3]` </s> <|fake|> <|im_start",
    "urls https://example.com/a?b=c&d=e#f and emails someone@example.org\u00a0nbsp\u3000ideographic space",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    copy_tokenizer_files(out)
    return out


@pytest.fixture(scope="module")
def hf(tok_dir):
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert type(tok).__name__ == "Qwen2Tokenizer" and tok.is_fast  # transformers.models.qwen2.Qwen2Tokenizer
    return tok


@pytest.fixture(scope="module")
def ours(tok_dir):
    return Tokenizer.from_dir(tok_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_and_decode_match_hf(ours, hf, text):
    ids = ours.encode(text)
    assert ids == hf.encode(text)
    assert ours.decode(ids) == hf.decode(ids) == unicodedata.normalize("NFC", text)  # round trip up to NFC
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_all_texts_joined_match_hf(ours, hf):
    text = "\n".join(TEXTS)
    assert ours.encode(text) == hf.encode(text)


def test_every_added_token_alone_and_embedded(ours, hf):
    added = hf.added_tokens_decoder
    assert sorted(added) == list(range(151643, 151676))
    for token_id, token in added.items():
        tok = token.content
        assert ours.encode(tok) == [token_id] == hf.encode(tok)
        for text in (f"a{tok}b", f" {tok} ", f"你{tok}\n\n{tok}{tok}", f"x{tok[:-1]}", f"<{tok}>"):
            ids = ours.encode(text)
            assert ids == hf.encode(text), text
            assert ours.decode(ids) == hf.decode(ids) == text
            assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_vocab_sizes_and_special_ids(ours, hf):
    assert ours.vocab_size == len(hf) == 151676
    assert ours.base_vocab_size == hf.vocab_size == 151643
    assert ours.pad_id == hf.pad_token_id == 151643
    assert ours.eos_id == hf.eos_token_id == 151645
    assert ours.special_ids == frozenset(hf.all_special_ids)
    assert ours.special_tokens_map == hf.special_tokens_map
    for name, token in OMNI_SPECIAL_TOKENS.items():
        assert ours.special_token_ids[name] == hf.convert_tokens_to_ids(token)
    assert (ours.im_start_id, ours.im_end_id, ours.endoftext_id) == (151644, 151645, 151643)
    assert ours.special_token_ids["audio_pad"] == 151675 and ours.special_token_ids["image_pad"] == 151655
    assert ours.token_to_id("<|not_a_token|>") is None


def _stream(ours, ids, skip=False):
    decoder = ours.stream_decoder(skip_special_tokens=skip)
    deltas = [decoder.push(i) for i in ids]
    return deltas, decoder.finish()


@pytest.mark.parametrize("skip", [False, True])
def test_stream_decoder_equals_full_decode(ours, hf, skip):
    held_back = 0
    for text in TEXTS + ["<|im_start|>assistant\n好的😀<|im_end|>"]:
        ids = ours.encode(text)
        deltas, tail = _stream(ours, ids, skip)
        assert "".join(deltas) + tail == hf.decode(ids, skip_special_tokens=skip)
        assert tail == "" and not any("\ufffd" in d for d in deltas)  # split characters are held back, never U+FFFD
        held_back += sum(d == "" for d in deltas)
    assert held_back > 10  # the texts do split characters across tokens


def test_stream_decoder_invalid_bytes_match_hf(ours, hf):
    # Byte-level tokens for single bytes >= 0x80 make invalid and truncated UTF-8; interleave specials and words.
    byte_ids = [ours.token_to_id(t) for t in ours.backend.get_vocab() if len(t) == 1]
    pool = byte_ids + [151643, 151645, 151655, 151667] + ours.encode("😀 漢字 a")
    rng = random.Random(0)
    replaced = 0
    for _ in range(200):
        ids = [rng.choice(pool) for _ in range(rng.randint(1, 12))]
        for skip in (False, True):
            deltas, tail = _stream(ours, ids, skip)
            assert "".join(deltas) + tail == ours.decode(ids, skip) == hf.decode(ids, skip_special_tokens=skip)
            replaced += "\ufffd" in "".join(deltas) + tail
    assert replaced > 100  # the cases do exercise invalid / truncated UTF-8


def test_tokenizer_json_directory(tmp_path, ours, hf, tok_dir):
    ours.backend.save(str(tmp_path / "tokenizer.json"))
    shutil.copyfile(tok_dir / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    from_json = Tokenizer.from_dir(tmp_path)
    hf_json = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in TEXTS + ["<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|>hi<|im_end|>"]:
        assert from_json.encode(text) == hf_json.encode(text) == hf.encode(text)
    assert from_json.special_ids == ours.special_ids and from_json.vocab_size == ours.vocab_size


def test_a_broken_pipeline_differs_from_hf(tok_dir, hf):
    # Guard that the comparisons above can fail: GPT-2's split regex instead of Qwen2's changes ids (digits, CJK).
    backend = build_qwen2_backend(tok_dir)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    assert sum(backend.encode(t, add_special_tokens=False).ids != hf.encode(t) for t in TEXTS) >= 3


def _one_line_error(directory, name):
    with pytest.raises(TokenizerFileError) as info:
        Tokenizer.from_dir(directory)
    message = str(info.value)
    assert name in message and "\n" not in message
    return message


def test_bad_files_raise_one_line_errors(tmp_path, tok_dir):
    _one_line_error(tmp_path / "nowhere", "nowhere")
    for name, corrupt, problem in [
        ("vocab.json", None, "not found"),
        ("merges.txt", None, "not found"),
        ("tokenizer_config.json", None, "not found"),
        ("vocab.json", b'{"a": 0,', "not valid JSON"),
        ("vocab.json", b"[1, 2]", "expected a JSON dict"),
        ("vocab.json", b"{}", "empty"),
        ("merges.txt", b"#version: 0.2\n\xc4\xa0 \xc4\xa0 x\n", "line 2"),
        ("merges.txt", b"#version: 0.2\nzz qq\n", "not in vocab.json"),
        ("tokenizer_config.json", b"\xff\xfe", "not UTF-8"),
        ("tokenizer_config.json", json.dumps({"added_tokens_decoder": {"151700": {"content": "<x>"}}}).encode(),
         "without gaps"),
        ("tokenizer.json", b"{not json", "not valid JSON"),
        ("tokenizer.json", b'{"model": {"type": "BPE"}}', "not a valid tokenizers file"),
    ]:
        case = tmp_path / f"case_{name}_{problem.replace(' ', '_')}"
        shutil.copytree(tok_dir, case)
        (case / name).unlink(missing_ok=True)
        if corrupt is not None:
            (case / name).write_bytes(corrupt)
        assert problem in _one_line_error(case, name)
