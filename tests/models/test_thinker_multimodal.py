"""Multimodal prompts through the Thinker: our processor + encoders + merge + text model vs HF's ``model.thinker``.

Inputs come from ``MultimodalProcessor`` (its parity with HF's processor is tests/processing/test_multimodal.py)
and are given unchanged to HF. Tolerances (float32, valid = unpadded positions; measured values printed with -s):
- merged input embeddings vs HF ``hidden_states[0]`` (token embeddings with audio/image/video rows spliced in):
  1e-5 max abs (measured <= 6e-6: the audio and vision encoders' own fp32 noise);
- logits from HF's merged embeddings + our deepstack payload and position ids: 1e-4 (measured <= 5e-5);
- logits end to end: 5e-4 (measured 2e-5 .. 2.9e-4). The rescaled tiny text model amplifies input noise: the
  6e-6 encoder noise becomes 2.9e-4 at one token of the audio-in-video prompt (logits up to ~9), where HF's own
  embeddings give 5e-5 (previous item). Dropping deepstack misses by ~10.
Greedy ids must
equal HF's ``thinker.generate`` exactly, and each row of a mixed batch must equal its prompt generated alone.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from multimodal_helpers import media  # noqa: F401 (fixture)

from omni_jax.generation.sampling import SamplingConfig
from omni_jax.generation.thinker_engine import ThinkerEngine
from omni_jax.models.common import pure_params
from omni_jax.models.thinker import PlaceholderMismatchError, prepare_prompt, thinker_logits
from omni_jax.processing.multimodal import MediaOptions, MultimodalProcessor
from omni_jax.weights import load_checkpoint

EMBED_TOL = 1e-5
TOL = 1e-4  # logits given HF's merged embeddings
E2E_TOL = 5e-4  # logits end to end
NEW = 8
EOS, PAD = 151645, 151643
BUCKET = 128  # one padded length for every prompt here: fewer compilations
# Small video frames (64x64 -> 8 tokens per video) keep prompts short; the default video size is covered by the
# processor's parity test. The model sees whatever the processor produced, so parity does not depend on it.
OPTIONS = MediaOptions(video_min_pixels=64 * 64, video_max_pixels=64 * 64)


def user(*items, text="Describe what you perceive."):
    return [{"role": "user", "content": [*items, {"type": "text", "text": text}]}]


def item(kind, path):
    return {"type": kind, kind: str(path)}


@pytest.fixture(scope="module")
def setup(tiny_ckpt):
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeForConditionalGeneration

    cfg, model = load_checkpoint(tiny_ckpt)
    torch.set_num_threads(2)
    hf = Qwen3OmniMoeForConditionalGeneration.from_pretrained(tiny_ckpt, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    return dict(cfg=cfg, params=pure_params(model.thinker),
                proc=MultimodalProcessor.from_dir(tiny_ckpt, cfg, bucket=BUCKET), engine=ThinkerEngine(cfg, pure_params(model.thinker.text)), hf=hf)


@pytest.fixture(scope="module")
def prompts(media):
    m = media
    return {
        "audio": (user(item("audio", m["aud_a"]), text="What is this sound?"), False),
        "image": (user(item("image", m["img_a"])), False),
        "audio_image": (user(item("audio", m["aud_b"]), item("image", m["img_b"])), False),
        "two_images": (user(item("image", m["img_a"]), item("image", m["img_b"]), text="Compare."), False),
        "video": (user(item("video", m["vid"])), False),
        "video_audio": (user(item("video", m["vid_av"])), True),
    }


def hf_tensors(batch):
    out = {}
    for k, v in batch.hf_inputs().items():
        if isinstance(v, np.ndarray):
            out[k] = torch.from_numpy(np.ascontiguousarray(v)).to(
                torch.long if v.dtype.kind in "iu" else torch.float32)
        else:
            out[k] = v
    return out


def trim(batch):
    """Drop the bucket padding columns every row has (HF does not need them; results are unchanged)."""
    start = int(np.argmax(batch.attention_mask.max(0) > 0))
    for k in ("input_ids", "attention_mask"):
        setattr(batch, k, getattr(batch, k)[:, start:])
    batch.position_ids = batch.position_ids[:, :, start:]
    return batch


def test_logits_match_hf(setup, prompts, media):
    s = setup
    cases = {k: [conv] for k, (conv, _) in prompts.items()}
    flags = {k: f for k, (_, f) in prompts.items()}
    cases["batch"], flags["batch"] = [prompts["audio_image"][0], prompts["video"][0]], False
    worst, given = {}, {}
    for name, convs in cases.items():
        batch = s["proc"](convs, OPTIONS, use_audio_in_video=flags[name])
        prompt = prepare_prompt(s["params"], s["cfg"], batch)
        ours = np.asarray(thinker_logits(s["params"], s["cfg"], prompt))
        with torch.no_grad():
            out = s["hf"].thinker(**hf_tensors(batch), output_hidden_states=True)
        ref = out.logits.numpy()
        valid = batch.attention_mask.astype(bool)
        embed_err = float(np.abs(np.asarray(prompt.inputs_embeds) - out.hidden_states[0].numpy())[valid].max())
        assert embed_err <= EMBED_TOL, (name, embed_err)
        worst[name] = float(np.abs(ours - ref)[valid].max())
        with_hf_embeds = dataclasses.replace(prompt, inputs_embeds=jnp.asarray(out.hidden_states[0].numpy()))
        from_hf = np.asarray(thinker_logits(s["params"], s["cfg"], with_hf_embeds))
        given[name] = float(np.abs(from_hf - ref)[valid].max())
        if name == "image":
            no_ds = prepare_prompt(s["params"], s["cfg"], batch, drop_deepstack=True)
            broken = np.asarray(thinker_logits(s["params"], s["cfg"], no_ds))
            no_deepstack = float(np.abs(broken - ref)[valid].max())
    print("max |logits - HF| on valid positions, end to end:", worst)
    print("  from HF's merged embeddings:", given, " image without deepstack:", no_deepstack)
    assert no_deepstack > 100 * E2E_TOL
    assert max(given.values()) <= TOL, given
    assert max(worst.values()) <= E2E_TOL, worst


def hf_generate(hf, batch, new=NEW):
    batch = trim(batch)
    with torch.no_grad():
        out = hf.thinker.generate(**hf_tensors(batch), max_new_tokens=new, do_sample=False, eos_token_id=EOS,
                                  pad_token_id=PAD)
    rows = out[:, batch.input_ids.shape[1]:].numpy()
    return [[int(t) for t in r[: list(r).index(EOS) + 1]] if EOS in r else [int(t) for t in r] for r in rows]


def ours_generate(s, convs, flag):
    batch = s["proc"](convs, OPTIONS, use_audio_in_video=flag)
    prompt = prepare_prompt(s["params"], s["cfg"], batch)
    return s["engine"].generate(prompt, NEW, SamplingConfig.greedy(), {EOS}), batch


def test_greedy_matches_hf_generate(setup, prompts):
    s = setup
    alone = {}
    for name in ("audio", "image", "audio_image", "video", "video_audio"):
        conv, flag = prompts[name]
        ours, batch = ours_generate(s, [conv], flag)
        assert ours == hf_generate(s["hf"], batch), name
        alone[name] = ours[0]
    # a mixed batch of 2 (left padding): equal to HF on the batch, and each row equal to its prompt alone
    ours, batch = ours_generate(s, [prompts["audio_image"][0], prompts["video"][0]], False)
    assert batch.attention_mask[0].sum() != batch.attention_mask[1].sum()
    assert ours == hf_generate(s["hf"], batch)
    assert ours == [alone["audio_image"], alone["video"]]
    assert len(set(map(tuple, alone.values()))) > 1  # prompts actually steer the output


def test_placeholder_count_mismatch_is_an_error(setup, prompts):
    s = setup
    batch = s["proc"]([prompts["image"][0]], OPTIONS)
    batch.input_ids = batch.input_ids.copy()
    batch.input_ids[0, -5] = s["cfg"].thinker.image_token_id
    with pytest.raises(PlaceholderMismatchError, match="image"):
        prepare_prompt(s["params"], s["cfg"], batch)
