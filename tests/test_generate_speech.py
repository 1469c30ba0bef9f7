"""The generate CLI speaks: --speaker / --wav-out / --no-speech / --json codec_codes, wav, sample_rate.
Codes equal the library's ``speak`` (whose greedy codes equal HF's: tests/generation/test_speech.py)."""

import json
import subprocess
import sys
import wave

import numpy as np

from omni_jax.generation.sampling import SamplingConfig
from omni_jax.generation.speech import speak
from omni_jax.generation.talker_engine import TalkerSampling
from omni_jax.generation.thinker_engine import ThinkerEngine
from omni_jax.models.common import pure_params
from omni_jax.models.decoder import StackOptions
from omni_jax.processing.chat import build_messages
from omni_jax.processing.prompt import TextProcessor, prepare_text_batch
from omni_jax.weights import load_checkpoint

PROMPT = "Say something."


def cli(*args):
    return subprocess.run([sys.executable, "-m", "omni_jax.generate", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def library_codes(ckpt, new, frames, speaker):
    cfg, model = load_checkpoint(ckpt)
    proc = TextProcessor.from_dir(ckpt, cfg)
    prompt = prepare_text_batch(proc, [build_messages(PROMPT)])
    engine = ThinkerEngine(cfg, pure_params(model.thinker.text))
    opts = StackOptions.uniform(cfg.thinker.text, taps=(cfg.talker.accept_hidden_layer - 1,))
    records = []
    for rec in engine.stream(prompt, new, SamplingConfig.greedy(), {cfg.im_end_token_id}, opts=opts):
        records.append(rec)
        if int(rec.tokens[0]) == cfg.im_end_token_id:
            break
    res = speak(cfg, pure_params(model), records, prompt, speaker=speaker, talker_sampling=TalkerSampling.greedy(),
                max_frames=frames)
    return np.asarray(res.codes[0]).reshape(-1, 16), res.wavs[0]


def test_cli_speech_json_and_wav(tiny_ckpt, tmp_path):
    out = tmp_path / "speech.wav"
    r = cli("--checkpoint", tiny_ckpt, "--prompt", PROMPT, "--max-new-tokens", 5, "--greedy", "--json",
            "--speaker", "chelsie", "--wav-out", out, "--max-speech-frames", 6)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    codes = np.asarray(res["codec_codes"])
    assert codes.shape[1] == 16 and 1 <= len(codes) <= 6
    ref_codes, ref_wav = library_codes(tiny_ckpt, 5, 6, "Chelsie")
    assert np.array_equal(codes, ref_codes)
    assert res["sample_rate"] == 24000
    wav = np.asarray(res["wav"], np.float32)
    assert wav.size == 1920 * len(codes) - 555
    assert np.allclose(wav, ref_wav, atol=1e-5)
    with wave.open(str(out)) as f:
        assert f.getframerate() == 24000 and f.getnchannels() == 1 and f.getnframes() == wav.size


def test_cli_speech_switches_and_errors(tiny_ckpt, tiny_thinker_only_ckpt, tmp_path):
    r = cli("--checkpoint", tiny_ckpt, "--prompt", PROMPT, "--max-new-tokens", 3, "--greedy", "--json", "--no-speech")
    assert r.returncode == 0, r.stderr
    assert "codec_codes" not in json.loads(r.stdout.strip().splitlines()[-1])
    bad = cli("--checkpoint", tiny_ckpt, "--prompt", PROMPT, "--speaker", "nobody")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1  # a usage error
    assert "nobody" in bad.stderr and "Chelsie" in bad.stderr
    thinker_only = cli("--checkpoint", tiny_thinker_only_ckpt, "--prompt", PROMPT, "--wav-out", tmp_path / "x.wav")
    assert thinker_only.returncode == 2 and "no talker" in thinker_only.stderr
    assert len(thinker_only.stderr.strip().splitlines()) == 1
