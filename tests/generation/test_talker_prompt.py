"""The talker prompt equals what HF's ``Qwen3OmniMoeForConditionalGeneration.generate`` builds (fp32).

1. A text conversation with a system turn and an earlier assistant turn: our Thinker's records -> our talker
   prompt, against the arguments HF's ``generate`` passes to ``talker.generate`` (captured by a wrapper):
   ``inputs_embeds``, ``trailing_text_hidden``, ``tts_pad_embed``, ``talker_input_ids``, ``attention_mask``.
2. Multimodal user parts (audio and image placeholders -> ``hidden_projection`` of the tapped hidden state) on
   synthetic Thinker records, against HF's ``_get_talker_user_parts`` / ``_get_talker_assistant_parts``, and
   the talker's M-RoPE positions against HF ``talker.get_rope_index`` (given the thinker's
   audio_config: the talker config has none and HF crashes without it).
Tolerance 1e-5 max abs (embeddings O(1); the same fp32 matmuls in a different batch shape differ by ~1e-7).
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from omni_jax.config import OmniConfig
from omni_jax.generation.sampling import SamplingConfig
from omni_jax.generation.talker_prompt import (
    ASSISTANT_POSITIONS,
    TalkerMedia,
    TalkerPromptError,
    build_talker_prompt,
    user_positions,
)
from omni_jax.generation.thinker_engine import StepRecord, ThinkerEngine
from omni_jax.models.common import pure_params
from omni_jax.models.decoder import StackOptions
from omni_jax.processing.prompt import TextProcessor, prepare_text_batch
from omni_jax.weights import load_checkpoint

TOL = 1e-5
NEW = 6
SPEAKER = 2302  # ethan
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a prime."},
    {"role": "assistant", "content": "Seven."},
    {"role": "user", "content": "Say hello to the routing experts."},
]


class _Captured(Exception):
    pass


@pytest.fixture(scope="module")
def setup(tiny_ckpt):
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeForConditionalGeneration

    torch.set_num_threads(1)
    cfg, model = load_checkpoint(tiny_ckpt)
    hf = Qwen3OmniMoeForConditionalGeneration.from_pretrained(tiny_ckpt, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    return cfg, pure_params(model), hf, TextProcessor.from_dir(tiny_ckpt, cfg)


def hf_talker_inputs(hf, ids, mask, new=NEW):
    """Run HF generate until it calls talker.generate; return that call's keyword arguments (torch)."""
    captured = {}

    def capture(**kw):
        captured.update(kw)
        raise _Captured

    hf.talker.generate = capture
    try:
        with torch.no_grad():
            hf.generate(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                        speaker="Ethan", thinker_do_sample=False, talker_do_sample=False,
                        thinker_max_new_tokens=new, return_audio=True)
    except _Captured:
        pass
    finally:
        del hf.talker.generate
    return captured


def test_text_prompt_matches_hf_generate(setup):
    cfg, params, hf, proc = setup
    prompt = prepare_text_batch(proc, [CONVERSATION])
    opts = StackOptions.uniform(cfg.thinker.text, taps=(cfg.talker.accept_hidden_layer - 1,))
    records = list(ThinkerEngine(cfg, params["thinker"]["text"]).stream(
        prompt, NEW, SamplingConfig.greedy(), {cfg.im_end_token_id}, opts=opts))
    ours = build_talker_prompt(cfg, params["talker"], params["thinker"]["text"]["embed"], records,
                               prompt.input_ids, prompt.attention_mask, SPEAKER, [cfg.im_end_token_id])
    start = int(np.argmax(prompt.attention_mask[0] > 0))
    ref = hf_talker_inputs(hf, prompt.input_ids[:, start:], prompt.attention_mask[:, start:])

    n = ref["inputs_embeds"].shape[1]
    user_ids = ours.input_ids[0, -n:-ASSISTANT_POSITIONS].tolist()
    assert user_ids.count(cfg.user_token_id) == 2  # both user turns ...
    assert cfg.system_token_id not in user_ids and cfg.assistant_token_id not in user_ids  # ... nothing else
    np.testing.assert_array_equal(ours.input_ids[:, -n:], ref["talker_input_ids"].numpy())
    np.testing.assert_array_equal(ours.attention_mask[:, -n:], ref["attention_mask"].numpy())
    assert not ours.attention_mask[:, :-n].any()
    err = np.abs(np.asarray(ours.inputs_embeds[:, -n:]) - ref["inputs_embeds"].numpy()).max()
    t = ref["trailing_text_hidden"].shape[1]
    assert ours.trailing_lengths.tolist() == [t]
    err_trailing = np.abs(np.asarray(ours.trailing_text[:, :t]) - ref["trailing_text_hidden"].numpy()).max()
    pad = ref["tts_pad_embed"].numpy().reshape(-1)
    err_pad = np.abs(np.asarray(ours.tts_pad_embed) - pad).max()
    print(f"talker prompt err {err:.1e}, trailing {err_trailing:.1e}, tts_pad {err_pad:.1e}")
    assert max(err, err_trailing, err_pad) <= TOL
    rest = np.asarray(ours.trailing_text[0, t:])  # after the real entries: tts_pad
    np.testing.assert_allclose(rest, np.broadcast_to(pad, rest.shape), atol=TOL)
    # text-only: positions 0..n-1 on all three rows; decoding continues at n
    np.testing.assert_array_equal(ours.position_ids[:, :, -n:], np.broadcast_to(np.arange(n), (3, 1, n)))
    assert ours.next_position.tolist() == [n]


def synthetic_prompt(cfg: OmniConfig):
    """A system turn, then a user turn with 3 audio tokens and a 2x2 (merged) image, then the generation prompt."""
    th = cfg.thinker
    im_start, im_end, nl = cfg.im_start_token_id, cfg.im_end_token_id, 198
    ids = ([im_start, cfg.system_token_id, nl, 3430, im_end, nl, im_start, cfg.user_token_id, nl,
            th.audio_start_token_id] + [th.audio_token_id] * 3 + [th.audio_end_token_id, th.vision_start_token_id]
           + [th.image_token_id] * 4 + [th.vision_end_token_id, 45764, 23811, im_end, nl, im_start,
                                         cfg.assistant_token_id, nl])
    return np.asarray(ids)


def test_multimodal_user_part_and_positions_match_hf(setup):
    cfg, params, hf, _ = setup
    ids = synthetic_prompt(cfg)
    pad = 5  # left padding on our side (HF gets the unpadded row)
    p, h = len(ids) + pad, cfg.thinker.text.hidden_size
    g = np.random.default_rng(0)
    embeds = g.standard_normal((1, p, h)).astype(np.float32)
    hidden = g.standard_normal((1, p, h)).astype(np.float32)
    gen_tokens = [11, 12, 13, 14, cfg.im_end_token_id]  # the Thinker stopped at <|im_end|> after 5 tokens
    gen_embeds = g.standard_normal((1, len(gen_tokens) - 1, h)).astype(np.float32)
    tap = f"tap_{cfg.talker.accept_hidden_layer - 1}"
    records = [StepRecord(np.asarray([gen_tokens[0]]), None, {tap: jnp.asarray(hidden)}, jnp.asarray(embeds))]
    records += [StepRecord(np.asarray([tok]), None, {}, jnp.asarray(gen_embeds[:, k:k + 1]))
                for k, tok in enumerate(gen_tokens[1:])]
    input_ids = np.concatenate([np.full(pad, cfg.pad_token_id), ids])[None]
    mask = np.concatenate([np.zeros(pad), np.ones(len(ids))])[None].astype(np.int32)
    media = TalkerMedia(image_grid_thw=np.asarray([[1, 4, 4]]), audio_feature_lengths=np.asarray([20]))
    ours = build_talker_prompt(cfg, params["talker"], params["thinker"]["text"]["embed"], records, input_ids, mask,
                               SPEAKER, [cfg.im_end_token_id], media)

    # HF's pieces on the unpadded row, exactly as its generate calls them
    seq = torch.tensor(np.concatenate([ids, gen_tokens])[None])
    t_embed = torch.tensor(np.concatenate([embeds[:, pad:], gen_embeds], axis=1))
    t_hidden = torch.tensor(np.concatenate([hidden[:, pad:], gen_embeds * 0], axis=1))
    th = cfg.thinker
    mm_mask = (seq == th.audio_token_id) | (seq == th.image_token_id) | (seq == th.video_token_id)
    with torch.no_grad():
        full_user = hf._get_talker_user_parts(0, len(ids), mm_mask, t_hidden, t_embed)
        special = hf.thinker.get_input_embeddings()(torch.tensor([[cfg.tts_bos_token_id, cfg.tts_eos_token_id,
                                                                   cfg.tts_pad_token_id]]))
        bos, eos, tts_pad = hf.talker.text_projection(special).chunk(3, dim=1)
        start = int(np.nonzero((ids[:-1] == cfg.im_start_token_id) & (ids[1:] == cfg.assistant_token_id))[0][-1])
        asst, asst_ids, trailing = hf._get_talker_assistant_parts(start, seq.shape[1], SPEAKER, t_embed, tts_pad,
                                                                  bos, eos)
    users = user_positions(ids, cfg)
    assert users.tolist() == list(range(6, len(ids) - 3))
    ref = torch.cat([full_user[:, users], asst], dim=1).numpy()
    n = ref.shape[1]
    assert mm_mask[0, users].sum() == 7
    err = np.abs(np.asarray(ours.inputs_embeds[:, -n:]) - ref).max()
    t = trailing.shape[1]
    err_t = np.abs(np.asarray(ours.trailing_text[:, :t]) - trailing.numpy()).max()
    print(f"multimodal talker prompt err {err:.1e}, trailing {err_t:.1e}")
    assert max(err, err_t) <= TOL and ours.trailing_lengths.tolist() == [t]

    talker_ids = np.concatenate([ids[users], asst_ids[0].numpy()])[None]
    np.testing.assert_array_equal(ours.input_ids[:, -n:], talker_ids)
    hf.talker.config.audio_config = hf.config.thinker_config.audio_config  # the talker config has none: HF crashes
    ref_pos, _ = hf.talker.get_rope_index(torch.tensor(talker_ids), torch.tensor([[1, 4, 4]]), None,
                                          torch.ones_like(torch.tensor(talker_ids)), False, torch.tensor([20]), None)
    np.testing.assert_array_equal(ours.position_ids[:, :, -n:], ref_pos.numpy())
    assert ours.next_position[0] == ref_pos.max() + 1
    assert not np.array_equal(ref_pos[0], ref_pos[1])  # the image block really has its own h/w positions


def test_user_role_rule():
    cfg = OmniConfig()
    s, e, nl = cfg.im_start_token_id, cfg.im_end_token_id, 198
    ids = np.asarray([s, cfg.system_token_id, nl, 1, e, nl, s, cfg.user_token_id, nl, 2, 3, e, nl,
                      s, cfg.assistant_token_id, nl, 4, e, nl, s, cfg.user_token_id, nl, 5, e, nl, s,
                      cfg.assistant_token_id, nl])
    assert user_positions(ids, cfg).tolist() == list(range(6, 13)) + list(range(19, 25))


def test_bad_thinker_output_fails_clearly(setup):
    cfg, params, _, _ = setup
    h = cfg.thinker.text.hidden_size
    ids = np.asarray([[cfg.im_start_token_id, cfg.user_token_id, 198, 5, cfg.im_end_token_id, 198]])
    tap = f"tap_{cfg.talker.accept_hidden_layer - 1}"
    rec = [StepRecord(np.asarray([7]), None, {tap: jnp.zeros((1, 6, h))}, jnp.zeros((1, 6, h)))]
    with pytest.raises(TalkerPromptError, match="assistant"):
        build_talker_prompt(cfg, params["talker"], params["thinker"]["text"]["embed"], rec, ids, np.ones_like(ids),
                            SPEAKER, [cfg.im_end_token_id])
    rec = [StepRecord(np.asarray([7]), None, {}, jnp.zeros((1, 6, h)))]
    with pytest.raises(TalkerPromptError, match="taps"):
        build_talker_prompt(cfg, params["talker"], params["thinker"]["text"]["embed"], rec, ids, np.ones_like(ids),
                            SPEAKER, [cfg.im_end_token_id])
