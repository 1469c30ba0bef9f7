"""The notebook API: omni_jax.load(...).generate / .stream give what the engine and CLI give."""

import numpy as np

import omni_jax
from omni_jax.generation.talker_engine import TalkerSampling
from omni_jax.processing.chat import build_messages
from multimodal_helpers import media  # noqa: F401  (fixture)


def test_generate_batch_and_stream(tiny_ckpt, media):  # noqa: F811
    model = omni_jax.load(tiny_ckpt)
    text_only = build_messages("Hello there")
    with_image = [{"role": "user", "content": [{"type": "image", "image": str(media["img_a"])},
                                               {"type": "text", "text": "What is it?"}]}]
    alone = [model.generate(c, max_new_tokens=4, speech=False) for c in (text_only, with_image)]
    batch = model.generate([text_only, with_image], max_new_tokens=4, speech=False)
    for a, b in zip(alone, batch):
        assert a.token_ids == b.token_ids and a.text == b.text and a.wav is None
    assert batch[0].router_counts.shape == (model.cfg.thinker.text.num_layers, model.cfg.thinker.text.num_experts)
    spoken = model.generate(text_only, max_new_tokens=4, talker_sampling=TalkerSampling.greedy(), max_speech_frames=6)
    assert spoken.token_ids == alone[0].token_ids
    assert spoken.codec_codes.shape[1] == 16 and spoken.sample_rate == 24000
    assert spoken.wav.size == 1920 * len(spoken.codec_codes) - 555
    events = list(model.stream(text_only, max_new_tokens=4, speech=False))
    assert events[-1]["type"] == "result"
    streamed = "".join(e["delta"] for e in events if e["type"] == "text")
    assert streamed == events[-1]["result"].text == alone[0].text
    assert np.all(np.isfinite(spoken.wav))


def test_stream_speech_in_pieces(tiny_ckpt):
    """Audio pieces arrive before the result, concatenate to chunked_decode(codes, chunk, 25) and (chunk 300)
    to generate()'s waveform; the time to the first token and to the first audio piece is reported."""
    from omni_jax.models.code2wav import chunked_decode

    model = omni_jax.load(tiny_ckpt)
    msgs = build_messages("Say something")
    kw = dict(max_new_tokens=4, talker_sampling=TalkerSampling.greedy(), max_speech_frames=7)
    events = list(model.stream(msgs, audio_chunk_frames=2, **kw))
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "result" and "audio" in kinds and kinds.index("audio") < len(kinds) - 1
    res = events[-1]["result"]
    pieces = [e["wav"] for e in events if e["type"] == "audio"]
    assert len(pieces) == -(-len(res.codec_codes) // 2)  # one piece per 2 frames, the rest flushed
    np.testing.assert_array_equal(np.concatenate(pieces), res.wav)
    expect = chunked_decode(model.params["code2wav"], res.codec_codes.T[None], model.cfg.code2wav, 2, 25)[0]
    np.testing.assert_allclose(res.wav, expect, atol=1e-6)
    whole = model.generate(msgs, **kw)
    np.testing.assert_array_equal(whole.codec_codes, res.codec_codes)
    one_chunk = [e for e in model.stream(msgs, audio_chunk_frames=300, **kw) if e["type"] == "result"][0]["result"]
    np.testing.assert_array_equal(one_chunk.wav, whole.wav)
    t = res.extras
    assert 0 < t["time_to_first_token_s"] < t["time_to_first_audio_s"] <= t["total_s"]
