"""The fast compile effort (XLA's lowest optimization level and older loop emitters, chosen automatically for
models under 256 MiB of parameters) generates what the full effort does."""

import numpy as np

import omni_jax
from omni_jax.generation.talker_engine import TalkerSampling
from omni_jax.processing.chat import build_messages


def test_fast_effort_gives_the_same_tokens_codes_and_waveform(tiny_tamed_ckpt, monkeypatch):
    kw = dict(max_new_tokens=6, max_speech_frames=6, talker_sampling=TalkerSampling.greedy())
    msgs = build_messages("Tell me about experts.")
    monkeypatch.setenv("OMNI_JAX_COMPILE_EFFORT", "full")
    full_model = omni_jax.load(tiny_tamed_ckpt)
    assert full_model.compile_effort == "full"
    full = full_model.generate(msgs, **kw)
    monkeypatch.setenv("OMNI_JAX_COMPILE_EFFORT", "auto")
    model = omni_jax.load(tiny_tamed_ckpt)
    assert model.compile_effort == "fast"  # the tiny checkpoint: ~98 MB of parameters
    fast = model.generate(msgs, **kw)
    assert fast.token_ids == full.token_ids
    np.testing.assert_array_equal(fast.codec_codes, full.codec_codes)
    assert np.mean(np.abs(full.wav) >= 0.999) < 0.05  # an unsaturated waveform, so the comparison means something
    diff = np.max(np.abs(fast.wav - full.wav))
    print(f"fast vs full effort: max |wav diff| {diff:.2e}, peak {np.max(np.abs(full.wav)):.3f}")
    # the two compilations evaluate transcendental functions with different approximations (float32 rounding,
    # ~1e-6 relative per op), carried through Code2Wav's ~30 layers
    np.testing.assert_allclose(fast.wav, full.wav, atol=5e-5)  # measured 5.6e-6
