"""Which decode-step projections go through the CPU matmul kernel, at the real attention widths.

o always; q/k/v in one ``OmniMatmulShared`` call from 2 rows, and from 1 row only while the three weights are
small (the Talker's). The Thinker's single q/k/v row keeps XLA's dots: through the kernel it gained nothing in
stacks and lost on a lone layer (``models.decoder``). Checked on the lowered program, without allocating weights.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from omni_jax import kernels
from omni_jax.config import TALKER_TEXT_DEFAULTS, TextConfig
from omni_jax.models.common import pure_params
from omni_jax.models.decoder import DecoderLayers, KVCache, StackOptions, decoder_stack, stack_mask, text_cos_sin

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C++ compiler: the CPU kernels are off")


def kernel_calls(cfg: TextConfig, batch: int) -> dict[str, int]:
    """Kernel calls in one decode step (1 token per sequence, ``batch`` sequences) of a 1-layer stack."""
    cfg = dataclasses.replace(cfg, num_layers=1, num_experts=4, top_k=2)
    layers = jax.eval_shape(lambda: pure_params(DecoderLayers(cfg, nnx.Rngs(0))))
    opts = StackOptions.uniform(cfg)

    def step(layers, x, pos, cache):
        cos, sin = text_cos_sin(pos, cfg, x.dtype)
        am = jnp.ones(x.shape[:2], jnp.int32)
        mask, _ = stack_mask(am, cache, cache.length, x.shape[1])
        return decoder_stack(layers, x, cos, sin, mask, cfg, opts, cache=cache, slot=cache.length,
                             token_mask=am.astype(bool))

    cache = jax.eval_shape(lambda: KVCache.create(cfg, batch, 16, jnp.float32))
    x = jax.ShapeDtypeStruct((batch, 1, cfg.hidden_size), jnp.float32)
    pos = jax.ShapeDtypeStruct((3, batch, 1), jnp.float32)
    text = jax.jit(step).lower(layers, x, pos, cache).as_text()
    return {name: len(re.findall(rf"@{name}\(", text)) for name in ("OmniMatmul", "OmniMatmulShared")}


@pytest.mark.parametrize("which", ["thinker", "talker"])
def test_decode_projections_through_the_kernel(which):
    cfg = TextConfig() if which == "thinker" else TextConfig(**TALKER_TEXT_DEFAULTS)
    one, four = kernel_calls(cfg, 1), kernel_calls(cfg, 4)
    assert one["OmniMatmul"] == 1 and four["OmniMatmul"] == 1  # o
    assert four["OmniMatmulShared"] == 1  # q/k/v of 4 rows in one call
    assert one["OmniMatmulShared"] == (0 if which == "thinker" else 1)
