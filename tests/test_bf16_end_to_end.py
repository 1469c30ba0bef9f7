"""bfloat16 end to end: a bf16 load holds every parameter in bf16 (half the bytes of fp32), and a multimodal
prompt with speech runs through the encoders, the Thinker, the Talker and Code2Wav with bf16 activations and
bf16 KV caches."""

import jax
import jax.numpy as jnp
import numpy as np

import omni_jax
from omni_jax.generation.talker_engine import TalkerSampling
from omni_jax.models import decoder
from multimodal_helpers import media  # noqa: F401  (fixture)


def test_bfloat16_end_to_end(tiny_ckpt, media, monkeypatch):  # noqa: F811
    model = omni_jax.load(tiny_ckpt, dtype="bfloat16")
    leaves = jax.tree.leaves(model.params)
    assert {a.dtype for a in leaves} == {jnp.dtype(jnp.bfloat16)}
    fp32 = omni_jax.load(tiny_ckpt)
    assert sum(a.nbytes for a in leaves) * 2 == sum(a.nbytes for a in jax.tree.leaves(fp32.params))

    caches = []
    create = decoder.KVCache.create.__func__

    def spy(cls, cfg, batch, size, dtype):
        caches.append(jnp.dtype(dtype))
        return create(cls, cfg, batch, size, dtype)

    monkeypatch.setattr(decoder.KVCache, "create", classmethod(spy))
    conv = [{"role": "user", "content": [{"type": "image", "image": str(media["img_a"])},
                                         {"type": "audio", "audio": str(media["aud_a"])},
                                         {"type": "text", "text": "What is this?"}]}]
    prompt = model.encode(model.prepare([conv]))
    assert prompt.inputs_embeds.dtype == jnp.bfloat16 and prompt.deepstack.dtype == jnp.bfloat16
    res = model.generate(conv, max_new_tokens=4, talker_sampling=TalkerSampling.greedy(), max_speech_frames=4)
    assert caches == [jnp.dtype(jnp.bfloat16)] * 2  # the Thinker's and the Talker's KV cache
    assert len(res.token_ids) > 0 and res.codec_codes.shape[1] == 16
    assert res.wav.size > 0 and np.all(np.isfinite(res.wav))
