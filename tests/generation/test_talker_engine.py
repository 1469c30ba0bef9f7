"""Talker decode loop against HF ``talker.generate`` called as HF's ``generate`` calls it (fp32, greedy).

The same talker prompt (random ``inputs_embeds``, ``trailing_text_hidden``, ``tts_pad_embed``) goes to both;
Batches are left-padded and each row is compared with HF on that prompt alone (HF's talker batch path is not
used). HF gets ``do_sample=False, repetition_penalty=1.05, suppress_tokens=[2048, 3072) minus EOS, eos=2150`` and
``max_new_tokens=M``; we get ``max_frames=M-1``. All 16 codes of every frame must be equal.
The tiny random talker never repeats a codec token nor samples EOS by itself, so two tests engineer its codec
head (same change on both sides): token A = 1.02 x token B along the mean hidden direction makes the
repetition penalty decide the greedy path; an EOS row just above one row's second token stops that row early
while the other runs on.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from omni_jax.config import OmniConfig
from omni_jax.generation import talker_engine
from omni_jax.generation.talker_engine import TalkerEngine, TalkerSampling
from omni_jax.generation.talker_prompt import TalkerPrompt
from omni_jax.models.common import pure_params
from omni_jax.weights import load_checkpoint

M = 12  # HF talker_max_new_tokens -> M - 1 frames
TOKEN_A, TOKEN_B = 7, 921


@pytest.fixture(scope="module")
def setup(tiny_ckpt):
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeForConditionalGeneration

    torch.set_num_threads(1)
    cfg, model = load_checkpoint(tiny_ckpt)
    hf = Qwen3OmniMoeForConditionalGeneration.from_pretrained(tiny_ckpt, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    h = cfg.talker.text.hidden_size
    g = np.random.default_rng(0)
    prompts = [(g.standard_normal((1, 13, h)), g.standard_normal((1, 4, h))),
               (g.standard_normal((1, 20, h)), g.standard_normal((1, 7, h)))]
    prompts = [(x.astype(np.float32), t.astype(np.float32)) for x, t in prompts]
    pad = g.standard_normal(h).astype(np.float32)
    return cfg, pure_params(model.talker), hf, prompts, pad


def hf_codes(hf, cfg: OmniConfig, x, trailing, pad, max_new=M, penalty=1.05):
    """(sampled codec tokens, frames [n, 16]) from HF's talker.generate with the reference's arguments."""
    v = cfg.talker.text.vocab_size
    suppress = [i for i in range(v - 1024, v) if i != cfg.talker.codec_eos_token_id]
    n = x.shape[1]
    with torch.no_grad():
        r = hf.talker.generate(inputs_embeds=torch.tensor(x), trailing_text_hidden=torch.tensor(trailing),
                               tts_pad_embed=torch.tensor(pad).reshape(1, 1, -1),
                               talker_input_ids=torch.full((1, n), cfg.tts_pad_token_id),
                               attention_mask=torch.ones(1, n, dtype=torch.long), max_new_tokens=max_new,
                               do_sample=False, top_k=50, top_p=1.0, temperature=0.9,
                               eos_token_id=cfg.talker.codec_eos_token_id, repetition_penalty=penalty,
                               suppress_tokens=suppress, output_hidden_states=True, return_dict_in_generate=True)
    frames = [hs[-1] for hs in r.hidden_states if hs[-1] is not None]
    return r.sequences[0].numpy(), torch.stack(frames, 1)[0].numpy()


def talker_prompt(rows, pad, bucket=32) -> TalkerPrompt:
    """Left-pad (inputs_embeds, trailing) pairs into our batch; text positions (cumsum of the mask)."""
    b, h = len(rows), pad.size
    p = -(-max(x.shape[1] for x, _ in rows) // bucket) * bucket
    embeds, mask = np.zeros((b, p, h), np.float32), np.zeros((b, p), np.int32)
    trailing, lengths = np.broadcast_to(pad, (b, 32, h)).copy(), np.zeros(b, np.int32)
    for i, (x, t) in enumerate(rows):
        embeds[i, p - x.shape[1]:], mask[i, p - x.shape[1]:] = x[0], 1
        trailing[i, :t.shape[1]], lengths[i] = t[0], t.shape[1]
    pos = np.cumsum(mask, 1).astype(np.float32) - 1
    pos = np.broadcast_to(np.where(mask > 0, pos, 1), (3, b, p)).copy()
    return TalkerPrompt(jnp.asarray(embeds), mask, pos, np.zeros((b, p), np.int32), jnp.asarray(trailing), lengths,
                        jnp.asarray(pad), pos[0, :, -1] + 1)


def engineered(hf, cfg, params, prompts, eos_like=None):
    """Codec head with TOKEN_A = 1.02 x TOKEN_B = 10 x (mean final hidden direction); optionally the EOS row
    = 1.01 x the row of token ``eos_like`` (EOS then wins where that token would). Changes ``hf`` in place
    (returns the original weight to restore) and returns our params to match."""
    w = hf.talker.codec_head.weight.data
    original = w.clone()
    direction = _mean_hidden_direction(hf, prompts)
    w[TOKEN_A] = 10 * direction
    w[TOKEN_B] = 10 * direction / 1.02
    if eos_like is not None:
        w[cfg.talker.codec_eos_token_id] = 1.01 * w[eos_like]
    return original, {**params, "codec_head": jnp.asarray(w.numpy().T)}


def _mean_hidden_direction(hf, prompts):
    """Unit vector along the mean of the talker's final normed hidden states over the test prompts (HF)."""
    with torch.no_grad():
        hidden = torch.cat([hf.talker.model(inputs_embeds=torch.tensor(x)).last_hidden_state[0] for x, _ in prompts])
    m = hidden.mean(0)
    return m / m.norm()


def test_greedy_codes_match_hf(setup):
    """Two prompts of different lengths in one batch (left-padded): each row equals HF on that prompt alone."""
    cfg, params, hf, prompts, pad = setup
    refs = [hf_codes(hf, cfg, x, t, pad)[1] for x, t in prompts]
    ours = TalkerEngine(cfg.talker, params).generate(talker_prompt(prompts, pad), M - 1, TalkerSampling.greedy())
    for ref, got in zip(refs, ours):
        assert ref.shape == (M - 1, 16)  # no EOS: the M-th sampled token gets no frame
        np.testing.assert_array_equal(got, ref)


def test_repetition_penalty_applies_in_greedy_decoding(setup):
    cfg, params, hf, prompts, pad = setup
    original, params = engineered(hf, cfg, params, prompts)
    try:
        refs = [hf_codes(hf, cfg, x, t, pad) for x, t in prompts]
        seq_no_penalty, _ = hf_codes(hf, cfg, *prompts[0], pad, penalty=1.0)
    finally:
        hf.talker.codec_head.weight.data.copy_(original)
    assert (refs[0][0] == TOKEN_A).sum() > 1
    assert not np.array_equal(refs[0][0], seq_no_penalty)  # the penalty changes the greedy path here ...
    ours = TalkerEngine(cfg.talker, params).generate(talker_prompt(prompts, pad), M - 1, TalkerSampling.greedy())
    for (_, ref), got in zip(refs, ours):
        np.testing.assert_array_equal(got, ref)  # ... and we apply it as HF does


def test_batched_rows_stop_at_their_own_eos(setup):
    cfg, params, hf, prompts, pad = setup
    original, _ = engineered(hf, cfg, params, prompts)
    try:
        seq1 = hf_codes(hf, cfg, *prompts[1], pad)[0]
        hf.talker.codec_head.weight.data.copy_(original)
        original, params = engineered(hf, cfg, params, prompts, eos_like=int(seq1[1]))  # row 1 stops there
        refs = [hf_codes(hf, cfg, x, t, pad) for x, t in prompts]
    finally:
        hf.talker.codec_head.weight.data.copy_(original)
    eos = cfg.talker.codec_eos_token_id
    assert eos not in refs[0][0] and len(refs[0][1]) == M - 1  # row 0 runs to the limit ...
    assert refs[1][0][-1] == eos and len(refs[1][1]) < 4  # ... row 1 stops early at its EOS
    ours = TalkerEngine(cfg.talker, params).generate(talker_prompt(prompts, pad), M - 1, TalkerSampling.greedy())
    for (seq, ref), got in zip(refs, ours):
        assert len(ref) == len(seq) - 1  # frames = sampled tokens - 1: the EOS has no frame
        np.testing.assert_array_equal(got, ref)


def test_decoding_does_not_recompile(setup):
    cfg, params, _, prompts, pad = setup
    engine = TalkerEngine(cfg.talker, params)
    engine.generate(talker_prompt(prompts, pad), 3, TalkerSampling.greedy())
    before = talker_engine.compile_count()
    (x0, t0), (x1, t1) = prompts
    other = talker_prompt([(x1[:, :17], t0), (x0[:, :9], t1)], pad)  # other lengths in the same bucket
    frames = engine.generate(other, 20, TalkerSampling.greedy())  # and more steps
    assert [len(f) for f in frames] == [20, 20]
    assert talker_engine.compile_count() == before


def test_sampling_rows_draw_from_their_own_keys(setup):
    cfg, params, _, prompts, pad = setup
    engine = TalkerEngine(cfg.talker, params)
    sampling = TalkerSampling()  # the reference's defaults: top-k 50, temperature 0.9, penalty 1.05; cp top-p 0.8
    a = engine.generate(talker_prompt(prompts, pad), 6, sampling, seeds=[3, 8])
    b = engine.generate(talker_prompt(prompts[::-1], pad), 6, sampling, seeds=[8, 3])
    np.testing.assert_array_equal(a[0], b[1])  # a row's draws depend on its seed, not on its place in the batch
    np.testing.assert_array_equal(a[1], b[0])
    c = engine.generate(talker_prompt(prompts, pad), 6, sampling, seeds=[4, 8])
    assert not np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1])
    greedy = engine.generate(talker_prompt(prompts, pad), 6, TalkerSampling.greedy())
    assert not np.array_equal(a[0], greedy[0])
    assert all((f[:, 0] < 2048).all() and (f >= 0).all() and (f[:, 1:] < 2048).all() for f in a)
