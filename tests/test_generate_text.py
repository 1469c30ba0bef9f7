"""Text generation: greedy ids equal HF ``generate`` on tiny checkpoints with the real vocabulary and special
ids; the CLI works on HF and converted directories; decoding never recompiles; bad input fails in one line."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from omni_jax.generation import thinker_engine
from omni_jax.generation.sampling import SamplingConfig
from omni_jax.generation.thinker_engine import ThinkerEngine
from omni_jax.models.common import pure_params
from omni_jax.processing.chat import build_messages
from omni_jax.processing.prompt import TextProcessor, prepare_text_batch
from omni_jax.weights import load_checkpoint

PROMPTS = ["Write a haiku about mixture-of-experts routing.", "你好，世界！ 🚀 def f(x): return x"]
NEW = 12


def hf_greedy(ckpt, ids, mask, new=NEW):
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeForConditionalGeneration

    hf = Qwen3OmniMoeForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
        out = hf.thinker.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                                  attention_mask=torch.tensor(mask, dtype=torch.long), max_new_tokens=new,
                                  do_sample=False, eos_token_id=151645, pad_token_id=151643)
    return out[:, ids.shape[1]:].numpy()


def strip_after_eos(row, eos=151645):
    row = [int(t) for t in row]
    return row[: row.index(eos) + 1] if eos in row else row


@pytest.fixture(scope="module")
def setup(tiny_thinker_only_ckpt):
    cfg, model = load_checkpoint(tiny_thinker_only_ckpt)
    proc = TextProcessor.from_dir(tiny_thinker_only_ckpt, cfg)
    engine = ThinkerEngine(cfg, pure_params(model.thinker.text))
    return cfg, proc, engine


def test_batched_greedy_equals_hf_generate(tiny_thinker_only_ckpt, setup):
    cfg, proc, engine = setup
    prompt = prepare_text_batch(proc, [build_messages(p) for p in PROMPTS])
    assert prompt.attention_mask[0].sum() != prompt.attention_mask[1].sum()  # real left padding
    ours = engine.generate(prompt, NEW, SamplingConfig.greedy(), {cfg.im_end_token_id})
    # HF on the same left-padded batch (trim the bucket padding HF does not need)
    start = int(np.argmax(prompt.attention_mask.max(0) > 0))
    ref = hf_greedy(tiny_thinker_only_ckpt, prompt.input_ids[:, start:], prompt.attention_mask[:, start:])
    for i in range(len(PROMPTS)):
        assert ours[i] == strip_after_eos(ref[i]), i
    # each row equals that prompt generated alone
    for i, p in enumerate(PROMPTS):
        alone = engine.generate(prepare_text_batch(proc, [build_messages(p)]), NEW, SamplingConfig.greedy(),
                                {cfg.im_end_token_id})
        assert alone[0] == ours[i]


def test_decoding_does_not_recompile(setup):
    cfg, proc, engine = setup
    prompt = prepare_text_batch(proc, [build_messages("first prompt")])
    engine.generate(prompt, 4, SamplingConfig.greedy(), set())
    before = thinker_engine.compile_count()
    # more tokens, another prompt of the same bucket, sampling on: no new compilation of prefill or step
    engine.generate(prepare_text_batch(proc, [build_messages("a different one")]), 9, SamplingConfig.greedy(), set())
    assert thinker_engine.compile_count() == before


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "omni_jax.generate", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_cli_greedy_json_on_hf_and_converted_dirs(tiny_thinker_only_ckpt, setup, tmp_path):
    cfg, proc, _ = setup
    prompt = prepare_text_batch(proc, [build_messages(PROMPTS[0], system="Be brief.")])
    start = int(np.argmax(prompt.attention_mask[0] > 0))
    ref = strip_after_eos(hf_greedy(tiny_thinker_only_ckpt, prompt.input_ids[:, start:],
                                    prompt.attention_mask[:, start:], new=6)[0])
    stats_file = tmp_path / "router.json"
    r = run_cli("--checkpoint", tiny_thinker_only_ckpt, "--prompt", PROMPTS[0], "--system", "Be brief.",
                "--max-new-tokens", 6, "--greedy", "--json", "--router-stats", stats_file)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["token_ids"] == ref
    # router statistics: per layer, every valid prompt token picked top_k experts; generated tokens likewise
    stats = json.loads(stats_file.read_text())
    text_cfg = cfg.thinker.text
    prompt_counts = np.asarray(stats["prompt_counts"])
    assert prompt_counts.shape == (text_cfg.num_layers, text_cfg.num_experts)
    assert (prompt_counts.sum(-1) == result["prompt_tokens"] * text_cfg.top_k).all()
    gen_counts = np.asarray(stats["generated_counts"])
    assert (gen_counts.sum(-1) == (len(result["token_ids"]) - 1) * text_cfg.top_k).all()
    assert isinstance(result["text"], str)
    out = tmp_path / "converted"
    c = subprocess.run([sys.executable, "convert/hf_to_orbax.py", str(tiny_thinker_only_ckpt), str(out),
                        "--dtype", "float32", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stderr
    r2 = run_cli("--checkpoint", out, "--prompt", PROMPTS[0], "--system", "Be brief.", "--max-new-tokens", 6,
                 "--greedy", "--json")
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout.strip().splitlines()[-1])["token_ids"] == ref


def test_cli_streams_text_and_fails_cleanly(tiny_thinker_only_ckpt, tmp_path):
    r = run_cli("--checkpoint", tiny_thinker_only_ckpt, "--prompt", "hi", "--max-new-tokens", 3, "--greedy")
    assert r.returncode == 0 and r.stdout.strip()
    bad = run_cli("--checkpoint", tmp_path / "nope", "--prompt", "hi")
    assert bad.returncode == 1 and "error" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    long = run_cli("--checkpoint", tiny_thinker_only_ckpt, "--prompt", "x " * 5000, "--max-new-tokens", 10)
    assert long.returncode == 2 and "exceeds the model's context" in long.stderr  # a usage error
    assert len(long.stderr.strip().splitlines()) == 1
