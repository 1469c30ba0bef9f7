"""Speech end to end for multimodal prompts (an image; an audio clip): our Thinker + ``speak`` against HF
``model.generate(return_audio=True)``, fp32, greedy.

Same protocol as tests/generation/test_speech.py (text prompts): thinker ids and all 16 codes of every frame
must be equal, waveforms correlate >= 0.999 (``compare_wavs``). The prompt comes from ``MultimodalProcessor``
and ``prepare_prompt``; ``speak`` reads the talker's media metadata (image grid / audio lengths) from the
PreparedPrompt (or from ``media=``). HF gets the same processor tensors (``batch.hf_inputs()``, bucket padding columns dropped).
HF's talker ``get_rope_index`` reads ``talker.config.audio_config``, which the talker config lacks; the
reference run sets it from the thinker config, which changes nothing for these prompts.
"""

import numpy as np
import pytest
import torch
from speech_helpers import compare_wavs, strip_after_eos
from multimodal_helpers import media  # noqa: F401 (fixture)

from omni_jax.generation.sampling import SamplingConfig
from omni_jax.generation.speech import SAMPLE_RATE, speak
from omni_jax.generation.talker_engine import TalkerSampling
from omni_jax.generation.talker_prompt import TalkerMedia
from omni_jax.generation.thinker_engine import ThinkerEngine
from omni_jax.models.common import pure_params
from omni_jax.models.decoder import StackOptions
from omni_jax.models.thinker import prepare_prompt
from omni_jax.processing.chat import build_messages
from omni_jax.processing.multimodal import MediaOptions, MultimodalProcessor
from omni_jax.weights import load_checkpoint

N, M = 5, 7  # thinker_max_new_tokens, talker_max_new_tokens (-> at most M - 1 frames)


@pytest.fixture(scope="module")
def setup(tiny_ckpt):
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeForConditionalGeneration

    torch.set_num_threads(1)
    cfg, model = load_checkpoint(tiny_ckpt)
    params = pure_params(model)
    hf = Qwen3OmniMoeForConditionalGeneration.from_pretrained(tiny_ckpt, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    if not hasattr(hf.talker.config, "audio_config"):  # HF's talker get_rope_index reads it
        hf.talker.config.audio_config = hf.config.thinker_config.audio_config
    proc = MultimodalProcessor.from_dir(tiny_ckpt, cfg)
    return cfg, params, hf, proc, ThinkerEngine(cfg, params["thinker"]["text"]), {}


def make_batch(setup, text, images=(), audios=()):
    proc = setup[3]
    return proc([build_messages(text, images=[str(p) for p in images], audios=[str(p) for p in audios])],
                MediaOptions())


def run_ours(setup, batch, explicit_media=False):
    """``explicit_media``: pass ``media=TalkerMedia.from_source(batch)`` instead of relying on the prompt."""
    cfg, params, _, _, thinker, _ = setup
    prompt = prepare_prompt(params["thinker"], cfg, batch)
    opts = StackOptions.uniform(cfg.thinker.text, taps=(cfg.talker.accept_hidden_layer - 1,))
    records = list(thinker.stream(prompt, N, SamplingConfig.greedy(), {cfg.im_end_token_id}, opts=opts))
    ids = strip_after_eos([int(r.tokens[0]) for r in records], cfg.im_end_token_id)
    res = speak(cfg, params, records, prompt, speaker="Ethan", talker_sampling=TalkerSampling.greedy(),
                max_frames=M - 1, media=TalkerMedia.from_source(batch) if explicit_media else None)
    return ids, res


def hf_tensors(batch):
    """HF's keyword arguments, without the bucket padding columns every row has."""
    start = int(np.argmax(np.asarray(batch.attention_mask).max(0) > 0))
    out = {}
    for k, v in batch.hf_inputs().items():
        if isinstance(v, np.ndarray):
            if k in ("input_ids", "attention_mask"):
                v = v[:, start:]
            v = torch.from_numpy(np.ascontiguousarray(v)).to(torch.long if v.dtype.kind in "iu" else torch.float32)
        out[k] = v
    return out


def run_hf(setup, batch, key):
    """HF generate(return_audio=True) -> (thinker ids, codes [frames, 16], waveform); cached under ``key``."""
    cfg, _, hf, _, _, cache = setup
    if key in cache:
        return cache[key]
    inputs = hf_tensors(batch)
    kept = {}
    original = hf.talker.generate

    def keep(**kw):  # keep the codes HF decodes (talker_result.hidden_states[*][-1])
        result = original(**kw)
        kept["codes"] = torch.stack([h[-1] for h in result.hidden_states if h[-1] is not None], 1)[0].numpy()
        return result

    hf.talker.generate = keep
    try:
        with torch.no_grad():
            seq, wav = hf.generate(**inputs, speaker="Ethan", thinker_do_sample=False, talker_do_sample=False,
                                   thinker_max_new_tokens=N, talker_max_new_tokens=M, return_audio=True)
    finally:
        del hf.talker.generate
    ids = strip_after_eos(seq[0, inputs["input_ids"].shape[1]:].tolist(), cfg.im_end_token_id)
    cache[key] = (ids, kept["codes"], wav.reshape(-1).numpy())
    return cache[key]


def check(setup, batch, key, label, explicit_media=False):
    ids, res = run_ours(setup, batch, explicit_media)
    ref_ids, ref_codes, ref_wav = run_hf(setup, batch, key)
    print(f"{label}: thinker ids {ids} (HF {ref_ids}); {len(ref_codes)} frames")
    assert ids == ref_ids
    assert res.codes[0].shape == ref_codes.shape == (M - 1, 16)
    np.testing.assert_array_equal(res.codes[0], ref_codes)
    assert res.sample_rate == SAMPLE_RATE
    compare_wavs(res.wavs[0], ref_wav, label)


def image_batch(setup, media):  # noqa: F811
    batch = make_batch(setup, "Describe this picture.", images=[media["img_a"]])  # 64x96 image
    assert batch.image_grid_thw is not None and batch.feature_attention_mask is None
    return batch


def test_image_prompt_speech_matches_hf_generate(setup, media):  # noqa: F811
    check(setup, image_batch(setup, media), "image", "image prompt speech vs HF generate")


def test_image_prompt_speech_with_explicit_media_matches_hf_generate(setup, media):  # noqa: F811
    check(setup, image_batch(setup, media), "image", "image prompt speech (media=) vs HF generate",
          explicit_media=True)


def test_audio_prompt_speech_matches_hf_generate(setup, media):  # noqa: F811
    batch = make_batch(setup, "What is this sound?", audios=[media["aud_a"]])  # 1.5 s
    assert batch.feature_attention_mask is not None and batch.image_grid_thw is None
    check(setup, batch, "audio", "audio prompt speech vs HF generate")
