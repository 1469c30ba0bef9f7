"""Speech end to end: our Thinker + ``speak`` against HF ``model.generate(return_audio=True)``, fp32, greedy.

HF: ``generate(input_ids, attention_mask, speaker=, thinker_do_sample=False, talker_do_sample=False,
thinker_max_new_tokens=N, talker_max_new_tokens=M, return_audio=True)`` (the talker keeps the reference's
repetition penalty 1.05). Ours: ``ThinkerEngine.stream`` with the accept-layer tap, then ``speak`` with
``TalkerSampling.greedy()`` and ``max_frames=M-1``. Thinker ids and all 16 codes of every frame must be equal.
Waveforms: correlation >= 0.999. The tiny Code2Wav saturates (every sample is clipped to +-1), so a pre-clip
value that lands on the other side of 0 flips one sample by 2.0: our ``chunked_decode`` runs a static
325-frame window whose fp32 round-off differs from HF's exact-length decode (our exact-length decode matches
HF bit for bit); at most 0.1 % of the samples may differ by more than 1e-4.
"""

import numpy as np
import pytest
import torch
from speech_helpers import compare_wavs, strip_after_eos

from omni_jax.generation.sampling import SamplingConfig
from omni_jax.generation.speech import SAMPLE_RATE, UnknownSpeakerError, speak, speaker_id
from omni_jax.generation.talker_engine import TalkerSampling
from omni_jax.generation.thinker_engine import ThinkerEngine
from omni_jax.models.common import pure_params
from omni_jax.models.decoder import StackOptions
from omni_jax.processing.chat import build_messages
from omni_jax.processing.prompt import TextProcessor, prepare_text_batch
from omni_jax.weights import load_checkpoint

N, M = 6, 8  # thinker_max_new_tokens, talker_max_new_tokens (-> at most M - 1 frames)
PROMPTS = [("Say hello to the routing experts.", "Be brief."), ("Count to three, slowly please.", None)]


@pytest.fixture(scope="module")
def setup(tiny_ckpt):
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeForConditionalGeneration

    torch.set_num_threads(1)
    cfg, model = load_checkpoint(tiny_ckpt)
    params = pure_params(model)
    hf = Qwen3OmniMoeForConditionalGeneration.from_pretrained(tiny_ckpt, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    proc = TextProcessor.from_dir(tiny_ckpt, cfg)
    return cfg, params, hf, proc, ThinkerEngine(cfg, params["thinker"]["text"]), {}


def conversation(i):
    text, system = PROMPTS[i]
    return build_messages(text, system=system)


def run_ours(setup, rows, speaker="Ethan"):
    """Our Thinker + speak on the conversations ``rows`` in one batch -> (thinker ids per row, SpeechResult)."""
    cfg, params, _, proc, thinker, _ = setup
    prompt = prepare_text_batch(proc, [conversation(i) for i in rows])
    opts = StackOptions.uniform(cfg.thinker.text, taps=(cfg.talker.accept_hidden_layer - 1,))
    records = list(thinker.stream(prompt, N, SamplingConfig.greedy(), {cfg.im_end_token_id}, opts=opts))
    ids = [strip_after_eos([int(r.tokens[b]) for r in records], cfg.im_end_token_id) for b in range(len(rows))]
    result = speak(cfg, params, records, prompt, speaker=speaker, talker_sampling=TalkerSampling.greedy(),
                   max_frames=M - 1)
    return ids, result


def run_hf(setup, i):
    """HF generate on conversation i alone -> (thinker ids, codes [frames, 16], waveform); cached."""
    cfg, _, hf, proc, _, cache = setup
    if ("hf", i) not in cache:
        prompt = prepare_text_batch(proc, [conversation(i)])
        start = int(np.argmax(prompt.attention_mask[0] > 0))
        kept = {}
        original = hf.talker.generate

        def keep(**kw):  # keep the codes HF decodes (talker_result.hidden_states[*][-1])
            result = original(**kw)
            kept["codes"] = torch.stack([h[-1] for h in result.hidden_states if h[-1] is not None], 1)[0].numpy()
            return result

        hf.talker.generate = keep
        try:
            with torch.no_grad():
                seq, wav = hf.generate(input_ids=torch.tensor(prompt.input_ids[:, start:], dtype=torch.long),
                                       attention_mask=torch.tensor(prompt.attention_mask[:, start:]),
                                       speaker="Ethan", thinker_do_sample=False, talker_do_sample=False,
                                       thinker_max_new_tokens=N, talker_max_new_tokens=M, return_audio=True)
        finally:
            del hf.talker.generate
        ids = strip_after_eos(seq[0, prompt.length - start:].tolist(), cfg.im_end_token_id)
        cache[("hf", i)] = (ids, kept["codes"], wav.reshape(-1).numpy())
    return cache[("hf", i)]


def ours_alone(setup, i):
    cache = setup[5]
    if ("ours", i) not in cache:
        ids, res = run_ours(setup, [i])
        cache[("ours", i)] = (ids[0], res)
    return cache[("ours", i)]


def test_text_prompt_speech_matches_hf_generate(setup):
    ids, res = ours_alone(setup, 0)
    ref_ids, ref_codes, ref_wav = run_hf(setup, 0)
    assert ids == ref_ids
    assert res.codes[0].shape == ref_codes.shape == (M - 1, 16)
    np.testing.assert_array_equal(res.codes[0], ref_codes)
    assert res.sample_rate == SAMPLE_RATE == 24_000
    compare_wavs(res.wavs[0], ref_wav, "speech vs HF generate")


def test_batched_speech_rows_equal_each_prompt_alone(setup):
    ids, res = run_ours(setup, [0, 1])
    assert len(res.codes) == len(res.wavs) == 2
    for b in range(2):
        alone_ids, alone = ours_alone(setup, b)
        assert ids[b] == alone_ids
        np.testing.assert_array_equal(res.codes[b], alone.codes[0])
        np.testing.assert_array_equal(res.wavs[b], alone.wavs[0])
        ref_ids, ref_codes, ref_wav = run_hf(setup, b)  # and the reference on that prompt alone
        assert ids[b] == ref_ids
        np.testing.assert_array_equal(res.codes[b], ref_codes)
        compare_wavs(res.wavs[b], ref_wav, f"batched row {b} vs HF alone")


def test_speakers(setup):
    cfg = setup[0]
    assert speaker_id(cfg, "Ethan") == speaker_id(cfg, "eTHAN") == 2302
    assert speaker_id(cfg, "CHELSIE") == 2301
    with pytest.raises(UnknownSpeakerError) as e:
        speaker_id(cfg, "Bob")
    assert isinstance(e.value, ValueError)
    msg = str(e.value)
    assert "\n" not in msg and "'Bob'" in msg and all(n in msg for n in ("Aiden", "Chelsie", "Ethan"))
    with pytest.raises(UnknownSpeakerError):
        speak(cfg, setup[1], [], None, speaker="nobody")
    _, upper = run_ours(setup, [0], speaker="ETHAN")
    np.testing.assert_array_equal(upper.codes[0], ours_alone(setup, 0)[1].codes[0])
    _, other = run_ours(setup, [0], speaker="Chelsie")
    assert not np.array_equal(other.codes[0], upper.codes[0])  # the speaker id reaches the talker
