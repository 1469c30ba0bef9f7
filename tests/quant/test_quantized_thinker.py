"""The Thinker's text model with INT8 / INT4 expert weights (tiny checkpoint, jitted forward and decode).

- Quantized params vs the same params dequantized up front: 1e-4 max abs on logits of magnitude ~8
  (fp32 summation order only; reached 0, bit-identical).
- The issue's check: 0 < INT8 logits error < INT4 error vs the float model (measured 0.20 vs 6.2 max abs on
  logits of magnitude 8.2: this random tiny model's routing flips under INT4).
- The generation engine (jitted prefill with tiles + jitted decode step with gather) runs greedy
  generation from quantized params without any change.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from component_loading import load_component
from omni_jax.config import OmniConfig
from omni_jax.generation.sampling import SamplingConfig
from omni_jax.generation.thinker_engine import PreparedPrompt, ThinkerEngine
from omni_jax.models import thinker_text
from omni_jax.models.common import pure_params
from omni_jax.models.decoder import StackOptions
from omni_jax.quant import QuantizedWeight, dequantize, expert_param_bytes, expert_weight_error, quantize_experts


@pytest.fixture(scope="module")
def thinker(tiny_ckpt):
    cfg = OmniConfig.from_file(tiny_ckpt)
    tc = cfg.thinker.text
    model = load_component(tiny_ckpt, lambda r: thinker_text.ThinkerText(tc, rngs=r), thinker_text.hf_rules(tc),
                           "thinker.")
    return cfg, pure_params(model)


@functools.partial(jax.jit, static_argnames=("tc", "opts"))
def _forward(p, ids, tc, opts):
    mask = jnp.ones(ids.shape, jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.float32)[None, None], (3, *ids.shape))
    return thinker_text.text_forward(p, tc, opts, thinker_text.embed_tokens(p, ids), pos, mask)["logits"]


def _logits(params, tc, ids):
    return np.asarray(_forward(params, ids, tc, StackOptions.uniform(tc)))  # auto: tiles for a prompt on CPU


def _expected_bytes(w, bits, group):
    return w.size * bits // 8 + w.size // group * 4  # ints + one fp32 scale per group


def test_thinker_forward_int8_error_below_int4(thinker):
    cfg, p = thinker
    tc = cfg.thinker.text
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 150000, size=(2, 12)), jnp.int32)
    ref = _logits(p, tc, ids)
    errs = {}
    for bits in (8, 4):
        pq = quantize_experts(p, bits, 128)
        mlp = pq["layers"]["mlp"]
        assert isinstance(mlp["gate_up"], QuantizedWeight) and isinstance(mlp["down"], QuantizedWeight)
        assert mlp["gate_up"].group == tc.hidden_size and mlp["down"].group == tc.moe_intermediate_size  # < 128
        assert mlp["router"] is p["layers"]["mlp"]["router"] and pq["embed"] is p["embed"]  # untouched
        fmlp = p["layers"]["mlp"]
        assert expert_param_bytes(pq) == (_expected_bytes(fmlp["gate_up"], bits, tc.hidden_size)
                                          + _expected_bytes(fmlp["down"], bits, tc.moe_intermediate_size))
        lq = _logits(pq, tc, ids)
        pd = dict(pq, layers=dict(pq["layers"], mlp=dict(mlp, gate_up=dequantize(mlp["gate_up"]),
                                                          down=dequantize(mlp["down"]))))
        np.testing.assert_allclose(lq, _logits(pd, tc, ids), atol=1e-4, rtol=0)
        errs[bits] = float(np.abs(lq - ref).max())
        assert expert_weight_error(p, pq) > 0
    assert 0 < errs[8] < errs[4], errs
    assert errs[4] > 3 * errs[8], errs  # INT4's 16x coarser steps show clearly


def test_thinker_engine_greedy_generation_with_quantized_experts(thinker):
    cfg, p = thinker
    pq = quantize_experts(p, 4, 128)
    n = 6
    ids = np.random.default_rng(1).integers(0, 150000, size=(1, n)).astype(np.int32)
    prompt = PreparedPrompt(ids, np.ones((1, n), np.int32),
                            np.broadcast_to(np.arange(n, dtype=np.float32)[None, None], (3, 1, n)).copy(),
                            np.zeros((1,), np.float32))
    out = ThinkerEngine(cfg, pq).generate(prompt, 4, SamplingConfig(), eos_ids=set())
    assert len(out[0]) == 4 and all(0 <= t < cfg.thinker.text.vocab_size for t in out[0])
    # the first token is the prefill's argmax: the same as the jitted forward's on the same params
    assert out[0][0] == int(np.argmax(_logits(pq, cfg.thinker.text, jnp.asarray(ids))[0, -1]))
