"""Whole-model expert quantization (``quantize_model_experts``) and the Talker's forward on INT8 / INT4 experts.

Tiny checkpoint loaded whole (omni_jax.weights.load_checkpoint). Checks: only the Thinker text and Talker
routed experts become QuantizedWeight (code predictor, shared expert, router, vision... untouched); the
jitted Talker forward on quantized experts equals the forward on the same weights dequantized up front to
1e-4 max abs (fp32 summation order only), and its codec-logit error vs the float Talker is 0 < INT8 < INT4.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.models.common import pure_params
from omni_jax.models.decoder import StackOptions
from omni_jax.models.talker import talker_forward
from omni_jax.quant import QuantizationError, QuantizedWeight, dequantize, param_bytes, quantize_model_experts
from omni_jax.weights import load_checkpoint


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    cfg, m = load_checkpoint(tiny_ckpt)
    return cfg, pure_params(m)


@functools.partial(jax.jit, static_argnames=("tcfg", "opts"))
def _forward(p, embeds, tcfg, opts):
    b, n, _ = embeds.shape
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32)[None, None], (3, b, n))
    return talker_forward(p, tcfg, opts, embeds, pos, jnp.ones((b, n), jnp.int32))["logits"]


def _talker_logits(params, cfg, embeds):  # one compile per param structure (float, int8, int4)
    return np.asarray(_forward(params["talker"], embeds, cfg.talker, StackOptions.uniform(cfg.talker.text)))


def test_quantize_model_experts_and_talker_forward(model):
    cfg, p = model
    q8 = quantize_model_experts(p, cfg, 8, 128)
    assert isinstance(q8["thinker"]["text"]["layers"]["mlp"]["down"], QuantizedWeight)
    tmlp = q8["talker"]["layers"]["mlp"]
    assert isinstance(tmlp["gate_up"], QuantizedWeight) and isinstance(tmlp["down"], QuantizedWeight)
    for k in ("router", "shared_gate_up", "shared_down", "shared_gate"):
        assert tmlp[k] is p["talker"]["layers"]["mlp"][k]
    assert q8["talker"]["code_predictor"] is p["talker"]["code_predictor"]
    assert q8["thinker"]["visual"] is p["thinker"]["visual"] and q8["code2wav"] is p["code2wav"]
    assert param_bytes(q8) < param_bytes(p)
    only_thinker = quantize_model_experts(p, cfg, 4, 128, stacks=("thinker",))
    assert only_thinker["talker"] is p["talker"]
    with pytest.raises(QuantizationError, match="unknown stacks"):
        quantize_model_experts(p, cfg, 8, 128, stacks=("vision",))

    embeds = jax.random.normal(jax.random.PRNGKey(0), (1, 10, cfg.talker.text.hidden_size), jnp.float32)
    ref = _talker_logits(p, cfg, embeds)
    errs = {}
    for bits in (8, 4):
        q = q8 if bits == 8 else quantize_model_experts(p, cfg, 4, 128, stacks=("talker",))
        lq = _talker_logits(q, cfg, embeds)
        m = q["talker"]["layers"]["mlp"]
        deq = dict(q, talker=dict(q["talker"], layers=dict(q["talker"]["layers"], mlp=dict(
            m, gate_up=dequantize(m["gate_up"]), down=dequantize(m["down"])))))
        np.testing.assert_allclose(lq, _talker_logits(deq, cfg, embeds), atol=1e-4, rtol=0)
        errs[bits] = float(np.abs(lq - ref).max())
    assert 0 < errs[8] < errs[4], errs
