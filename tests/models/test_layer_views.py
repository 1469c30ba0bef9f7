"""Per-layer weight views: arrays of their own that alias the stacked weights (no copy), read in place by the
decoder (through a switch over layers), the code predictor and Code2Wav. Same results as the stacks."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omni_jax.config import Code2WavConfig, CodePredictorConfig, TextConfig
from omni_jax.models import code2wav, code_predictor
from omni_jax.models.common import pure_params, stack_views
from omni_jax.models.decoder import (PER_LAYER, DecoderLayers, KVCache, StackOptions, decoder_stack, stack_mask,
                                     text_cos_sin, with_layer_views)

CFG = TextConfig(vocab_size=64, hidden_size=128, num_heads=4, num_kv_heads=2, head_dim=64,
                 mrope_section=(12, 10, 10), moe_intermediate_size=32, num_experts=4, top_k=2, num_layers=3)


def test_views_alias_the_stack():
    stack = jnp.arange(4 * 16 * 32, dtype=jnp.float32).reshape(4, 16, 32) + 0
    views = stack_views({"w": stack})
    base = np.asarray(stack).ctypes.data
    assert [v["w"].unsafe_buffer_pointer() - base for v in views] == [i * 16 * 32 * 4 for i in range(4)]
    for i, v in enumerate(views):
        np.testing.assert_array_equal(v["w"], stack[i])


def _decode(layers, x, cache, opts):
    def step(layers, x, cache):
        pos = jnp.broadcast_to(cache.length.astype(jnp.float32), (3, 1, 1))
        cos, sin = text_cos_sin(pos, CFG, x.dtype)
        am = jnp.ones((1, 1), jnp.int32)
        mask, _ = stack_mask(am, cache, cache.length, 1)
        y, kv, _, hidden = decoder_stack(layers, x, cos, sin, mask, CFG, opts, cache=cache, slot=cache.length,
                                         token_mask=am.astype(bool))
        return y, kv, hidden

    compiled = jax.jit(step).lower(layers, x, cache).compile()
    return compiled(layers, x, cache), compiled.memory_analysis().temp_size_in_bytes


def test_decoder_views_give_the_same_step_without_copying_projections():
    layers = pure_params(DecoderLayers(CFG, nnx.Rngs(0)))
    viewed = with_layer_views(layers)
    assert PER_LAYER in viewed and len(viewed[PER_LAYER]) == CFG.num_layers
    opts = StackOptions.uniform(CFG, taps=(0,))  # a tap splits the scan into two segments
    cache = KVCache.create(CFG, 1, 16, jnp.float32)
    rng = np.random.default_rng(0)
    cache = KVCache(jnp.asarray(rng.standard_normal(cache.k.shape), jnp.float32),
                    jnp.asarray(rng.standard_normal(cache.v.shape), jnp.float32),
                    cache.valid.at[:, :7].set(True), jnp.asarray(7, jnp.int32))
    x = jnp.asarray(rng.standard_normal((1, 1, CFG.hidden_size)), jnp.float32)
    (ref, ref_temp), (ours, our_temp) = _decode(layers, x, cache, opts), _decode(viewed, x, cache, opts)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(ours)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    projections = 4 * CFG.hidden_size * CFG.head_dim * (2 * CFG.num_heads + 2 * CFG.num_kv_heads)  # one layer
    # the stacks copy at least one layer's projections per step; the views none (what is left is the experts)
    assert ref_temp >= projections > 2 * our_temp, (ref_temp, our_temp, projections)


def test_code_predictor_views_give_the_same_frame():
    cfg = dataclasses.replace(CodePredictorConfig(), hidden_size=64, intermediate_size=96, num_heads=4,
                              num_kv_heads=2, head_dim=16, vocab_size=128, num_layers=2)
    params = pure_params(code_predictor.CodePredictor(cfg, nnx.Rngs(1)))
    viewed = code_predictor.with_layer_views(params)
    assert code_predictor.PER_LAYER in viewed
    heads = viewed[code_predictor.PER_HEAD]  # each code group's lm_head, aliasing the stack
    assert len(heads) == cfg.num_code_groups - 1
    assert heads[3].unsafe_buffer_pointer() == params["lm_head"].unsafe_buffer_pointer() + 3 * heads[3].nbytes
    ph, c0 = jnp.ones((1, cfg.hidden_size)), jnp.full((1, cfg.hidden_size), 0.5)
    ref = code_predictor.predict_codes_jit(params, ph, c0, jax.random.key(0), cfg=cfg)
    ours = code_predictor.predict_codes_jit(viewed, ph, c0, jax.random.key(0), cfg=cfg)
    np.testing.assert_array_equal(np.asarray(ref["codes"]), np.asarray(ours["codes"]))
    np.testing.assert_array_equal(np.asarray(ref["logits"]), np.asarray(ours["logits"]))


def test_code2wav_views_give_the_same_transformer_output():
    cfg = dataclasses.replace(Code2WavConfig(), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=4,
                              intermediate_size=48, sliding_window=8)
    params = {"layers": pure_params(code2wav.TransformerLayers(cfg, nnx.Rngs(2))), "norm": jnp.ones(cfg.hidden_size)}
    viewed = code2wav.with_layer_views(params)
    assert code2wav.PER_LAYER in viewed
    x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 5, cfg.hidden_size)), jnp.float32)
    transformer = jax.jit(code2wav.pre_transformer, static_argnames="cfg")
    np.testing.assert_array_equal(np.asarray(transformer(params, x, cfg=cfg)),
                                  np.asarray(transformer(viewed, x, cfg=cfg)))
