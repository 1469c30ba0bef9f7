"""Thinker-only releases (Thinking, Captioner): no talker, no Code2Wav, ``enable_audio_output`` false. A tiny one is
built as the Thinking release ships (its chat template and generation config, omni_jax/assets/thinking/) and
run through the API and the CLI; the reasoning between ``<think>`` and ``</think>`` comes back apart from the
answer (``result.reasoning``, JSON ``reasoning``), as serving stacks' Qwen3 reasoning parsers return it.

Random weights never write the tags, so the test makes them: it swaps lm_head columns (token t's logit becomes
token u's and back), so that where the model would write token g it writes ``<think>``/``</think>`` instead;
everything before that point is unchanged."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

import omni_jax
from omni_jax.generation.sampling import SamplingConfig
from omni_jax.processing.chat import build_messages
from omni_jax.processing.reasoning import ReasoningTags

ASSETS = Path(omni_jax.__file__).parent / "assets" / "thinking"
THINK, END = 151667, 151668
IM_START, EOS = 151644, 151645


def test_reasoning_split_on_tokens():
    tags = ReasoningTags(THINK, END)
    assert tags.split([THINK, 1, 2, END, 3, 4]) == ([1, 2], [3, 4])
    assert tags.split([1, 2, END, 3]) == ([1, 2], [3])  # the template opened <think> in the prompt
    assert tags.split([THINK, 1, 2]) == ([1, 2], [])  # stopped while reasoning
    assert tags.split([1, 2], opened=True) == ([1, 2], [])
    assert tags.split([1, 2]) == (None, [1, 2])  # no reasoning at all
    assert tags.opened_in_prompt([IM_START, 5, 6, THINK, 7], IM_START)
    assert not tags.opened_in_prompt([IM_START, 5, THINK, 7, END, 8], IM_START)
    assert not tags.opened_in_prompt([THINK, IM_START, 5], IM_START)  # an earlier turn's
    assert ReasoningTags(None, None).split([THINK, 1, END, 2]) == (None, [THINK, 1, END, 2])


def swap(w: np.ndarray, a: int, b: int) -> np.ndarray:
    w = w.copy()
    w[:, [a, b]] = w[:, [b, a]]
    return w


def test_thinking_release_api_and_cli(tiny_thinker_only_ckpt, tmp_path):
    ckpt = tmp_path / "thinking"
    shutil.copytree(tiny_thinker_only_ckpt, ckpt)
    for name in ("chat_template.json", "generation_config.json"):
        shutil.copy(ASSETS / name, ckpt / name)
    assert json.loads((ckpt / "config.json").read_text())["enable_audio_output"] is False

    model = omni_jax.load(ckpt)
    assert not model.has_talker
    msgs = build_messages("Think, then answer.")
    kw = dict(max_new_tokens=10, thinker_sampling=SamplingConfig.greedy())
    plain = model.generate(msgs, **kw)
    assert plain.reasoning is None and plain.wav is None and THINK not in plain.token_ids

    text = model.params["thinker"]["text"]
    w = np.asarray(text["lm_head"])  # [H, V]
    w = swap(w, THINK, plain.token_ids[0])  # the first token becomes <think>
    text["lm_head"] = jax.device_put(w)
    opened = model.generate(msgs, **kw).token_ids
    assert opened[0] == THINK
    k = next(i for i in range(3, len(opened)) if opened[i] not in opened[:i] + [EOS, plain.token_ids[0]])
    w = swap(w, END, opened[k])  # ... and token k becomes </think>
    text["lm_head"] = jax.device_put(w)
    res = model.generate(msgs, **kw)
    ids = res.token_ids
    assert ids[:k] == opened[:k] and ids[k] == END
    answer = [t for t in ids[k + 1:] if t != EOS]
    assert res.reasoning == model.tokenizer.decode(ids[1:k], skip_special_tokens=True).strip("\n")
    assert res.text == model.tokenizer.decode(answer, skip_special_tokens=True).lstrip("\n")
    assert (res.text, res.reasoning) != (plain.text, None)

    # the CLI on the same weights (written back as the release's lm_head), the checkpoint's sampling settings
    # overridden by --greedy; no speech, no wav
    tensors = load_file(ckpt / "model.safetensors")
    tensors["thinker.lm_head.weight"] = np.ascontiguousarray(w.T)
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    r = subprocess.run([sys.executable, "-m", "omni_jax.generate", "--checkpoint", str(ckpt), "--prompt",
                        "Think, then answer.", "--max-new-tokens", "10", "--greedy", "--json"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["token_ids"] == ids and out["reasoning"] == res.reasoning and out["text"] == res.text
    assert "wav" not in out and "codec_codes" not in out and not list(tmp_path.glob("*.wav"))
