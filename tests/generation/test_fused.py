"""``fused_generate``: the whole Thinker -> Talker -> Code2Wav generation as one jitted function gives what the
step-by-step engine gives (tokens and codes exactly; waveforms with the tiny model's clamp caveat, see
speech_helpers.compare_wavs), for a left-padded batch with an image row, and compiles once per bucket."""

import jax.monitoring
import numpy as np

import omni_jax
from omni_jax.generation import fused
from omni_jax.generation.sampling import SamplingConfig
from omni_jax.generation.speech import speaker_id
from omni_jax.generation.talker_engine import TalkerSampling
from omni_jax.processing.chat import build_messages
from multimodal_helpers import media  # noqa: F401  (fixture)
from speech_helpers import compare_wavs

COMPILES = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, d, **kw: COMPILES.append(name) if name == "/jax/core/compile/backend_compile_duration" else None)


def test_fused_generate_equals_the_engine_and_compiles_once(tiny_ckpt, media):  # noqa: F811
    model = omni_jax.load(tiny_ckpt)
    image = [{"role": "user", "content": [{"type": "image", "image": str(media["img_a"])},
                                          {"type": "text", "text": "What is it?"}]}]
    convs = [build_messages("Hello there, how are you?"), image]
    n_new, frames, chunk = 6, 5, 2
    ref = model.generate(convs, max_new_tokens=n_new, talker_sampling=TalkerSampling.greedy(),
                         max_speech_frames=frames, audio_chunk_frames=chunk)

    def run(conversations):
        prompt = model.encode(model.prepare(conversations))
        return fused.generate_fused(model.cfg, model.params, prompt, n_new, SamplingConfig.greedy(),
                                    {model.cfg.im_end_token_id}, speaker_id=speaker_id(model.cfg, "Ethan"),
                                    talker_sampling=TalkerSampling.greedy(), max_frames=frames, chunk_size=chunk)

    res = run(convs)
    for r, tokens, codes, wav in zip(ref, res.tokens, res.codes, res.wavs):
        assert tokens == r.token_ids
        np.testing.assert_array_equal(codes, r.codec_codes)
        compare_wavs(wav, r.wav, "fused vs engine")
    n_programs, n_compiles = fused.compile_count(), len(COMPILES)
    other = [build_messages("What is a mixture of experts?"), image]  # same buckets, another text
    res2 = run(other)
    assert fused.compile_count() == n_programs and len(COMPILES) == n_compiles  # nothing compiled
    assert len(res2.tokens) == 2 and all(len(c) > 0 for c in res2.codes)
    api = model.generate(other, max_new_tokens=n_new, talker_sampling=TalkerSampling.greedy(),
                         max_speech_frames=frames, audio_chunk_frames=chunk, fused=True)  # the notebook API
    assert [r.token_ids for r in api] == res2.tokens and fused.compile_count() == n_programs
