"""A decode step's compiled temporaries must not grow with the number of layers.

XLA:CPU copies a weight slice out of a stacked array before a dot, so the scan reads one layer's weights
per step (one layer's worth of temporaries). If a segment of the stack were sliced before its scan (the
Talker's tap and the deepstack injections split the stack), every layer of the segment would be copied on
each call: temporaries would grow with depth. Checked on the compiled program (``memory_analysis``) at tiny
sizes, without allocating any weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from omni_jax.config import TextConfig
from omni_jax.models.common import pure_params
from omni_jax.models.decoder import DecoderLayers, KVCache, StackOptions, decoder_stack, stack_mask, text_cos_sin

HIDDEN = 256


def _config(num_layers: int) -> TextConfig:
    return TextConfig(vocab_size=64, hidden_size=HIDDEN, num_heads=4, num_kv_heads=2, head_dim=64,
                      mrope_section=(12, 10, 10), moe_intermediate_size=64, num_experts=8, top_k=2,
                      num_layers=num_layers)


def _attention_bytes_per_layer(cfg: TextConfig) -> int:
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return 4 * cfg.hidden_size * (2 * q + 2 * kv)


def decode_step_temp_bytes(num_layers: int, tap: int | None, deepstack: int) -> int:
    """Compiled temporaries of one decode step (1 token, KV cache of 64) of a ``num_layers`` stack."""
    cfg = _config(num_layers)
    layers = jax.eval_shape(lambda: pure_params(DecoderLayers(cfg, nnx.Rngs(0))))
    opts = StackOptions.uniform(cfg, taps=() if tap is None else (tap,))

    def step(layers, x, pos, cache, inject):
        cos, sin = text_cos_sin(pos, cfg, x.dtype)
        am = jnp.ones(x.shape[:2], jnp.int32)
        mask, _ = stack_mask(am, cache, cache.length, x.shape[1])
        return decoder_stack(layers, x, cos, sin, mask, cfg, opts, cache=cache, slot=cache.length,
                             token_mask=am.astype(bool), inject=inject)

    cache = jax.eval_shape(lambda: KVCache.create(cfg, 1, 64, jnp.float32))
    x = jax.ShapeDtypeStruct((1, 1, HIDDEN), jnp.float32)
    pos = jax.ShapeDtypeStruct((3, 1, 1), jnp.float32)
    inject = jax.ShapeDtypeStruct((deepstack, 1, 1, HIDDEN), jnp.float32) if deepstack else None
    compiled = jax.jit(step).lower(layers, x, pos, cache, inject).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("split", ["plain", "tap", "tap_and_deepstack"])
def test_decode_step_temporaries_do_not_grow_with_depth(split):
    temps = {}
    for n in (4, 16):
        tap = None if split == "plain" else n // 2 - 1
        temps[n] = decode_step_temp_bytes(n, tap, deepstack=2 if split == "tap_and_deepstack" else 0)
    one_layer = _attention_bytes_per_layer(_config(4))
    # the same temporaries at 4 and 16 layers (a few bytes of bookkeeping may differ), about one layer's
    # attention weights: a sliced segment would add one layer's weights per layer of the segment
    assert temps[16] <= temps[4] + one_layer // 8, temps
    assert temps[16] <= 2 * one_layer, (temps, one_layer)
