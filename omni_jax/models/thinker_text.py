"""The Thinker's text model: embedding, 48 scanned MoE decoder layers, final norm, untied lm_head.

HF: ``Qwen3OmniMoeThinkerTextModel`` + ``thinker.lm_head``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from omni_jax.config import TextConfig
from omni_jax.models.common import normal, ones
from omni_jax.models.decoder import (DecoderLayers, KVCache, StackOptions, decoder_layer_rules, decoder_stack,
                                     stack_mask, text_cos_sin, with_layer_views)
from omni_jax.ops.linear import linear
from omni_jax.ops.norms import rms_norm
from omni_jax.weights.rules import Rule, copy_rule, linear_rule


class ThinkerText(nnx.Module):
    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.cfg = cfg
        self.embed = normal(rngs, cfg.vocab_size, cfg.hidden_size, axes=("vocab", "embed"), dtype=dtype)
        self.layers = DecoderLayers(cfg, rngs, dtype)
        self.norm = ones(cfg.hidden_size, axes=("norm",), dtype=dtype)
        self.lm_head = normal(rngs, cfg.hidden_size, cfg.vocab_size, axes=("embed", "vocab"), dtype=dtype)


def hf_rules(cfg: TextConfig) -> list[Rule]:
    """Names relative to ``thinker.`` (the text model's tensors sit at ``thinker.model.*`` and ``thinker.lm_head``)."""
    return [
        copy_rule("model.embed_tokens.weight", "embed"),
        copy_rule("model.norm.weight", "norm"),
        linear_rule("lm_head.weight", "lm_head"),
        *decoder_layer_rules(cfg, "model.", "layers."),
    ]


def with_decode_views(params: dict) -> dict:
    """The text params with per-layer projection views (``decoder.with_layer_views``): what the decode engines
    run with on CPU, so a step reads each layer's projections in place. Same results."""
    return dict(params, layers=with_layer_views(params["layers"]))


def embed_tokens(params: dict, input_ids: jax.Array) -> jax.Array:
    return jnp.take(params["embed"], input_ids, axis=0)


def text_forward(params: dict, cfg: TextConfig, opts: StackOptions, inputs_embeds: jax.Array,
                 position_ids: jax.Array, attention_mask: jax.Array, *, cache: KVCache | None = None,
                 deepstack: jax.Array | None = None, logits_at: str = "all"):
    """One forward of the text model.

    inputs_embeds [B, L, H]; position_ids [3, B, L]; attention_mask [B, L] (1 = real token).
    cache: a KVCache whose ``length`` is the slot the L new tokens are written at (all rows alike: prompts
    are left-padded). deepstack [n, B, L, H]: added after layers 0..n-1 (zeros away from visual tokens).
    logits_at: "all" | "last" | "none".
    Returns dict(logits, hidden (final normed), cache, stats, hidden_states).
    """
    dtype = inputs_embeds.dtype
    b, l, _ = inputs_embeds.shape
    cos, sin = text_cos_sin(position_ids, cfg, dtype)
    slot = 0 if cache is None else cache.length
    mask, valid = stack_mask(attention_mask, cache, slot, l)
    x, kv, stats, hidden = decoder_stack(params["layers"], inputs_embeds, cos, sin, mask, cfg, opts, cache=cache,
                                         slot=slot, token_mask=attention_mask.astype(bool), inject=deepstack)
    x = rms_norm(x, params["norm"], cfg.rms_norm_eps)
    new_cache = None
    if cache is not None:
        new_cache = KVCache(kv[0], kv[1], valid, cache.length + l)
    if logits_at == "all":
        logits = linear(x, params["lm_head"])
    elif logits_at == "last":
        logits = linear(x[:, -1:], params["lm_head"])
    else:
        logits = None
    return dict(logits=logits, hidden=x, cache=new_cache, stats=stats, hidden_states=hidden)
