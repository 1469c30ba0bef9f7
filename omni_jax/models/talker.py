"""The Talker: projections of Thinker states, a 20-layer MoE decoder with a shared expert, the codec head,
and the multi-codebook code predictor.

The decoder stack is the one the Thinker uses (``omni_jax.models.decoder``) with the Talker's config: its
MoE block carries the shared expert scaled by sigmoid(shared_expert_gate(x)). The Talker is always driven
by ``inputs_embeds`` (it has no token embedding of its own besides ``codec_embedding``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from omni_jax.config import TalkerConfig
from omni_jax.models import code_predictor as cp
from omni_jax.models.common import normal, ones, zeros
from omni_jax.models.decoder import (DecoderLayers, KVCache, StackOptions, decoder_layer_rules, decoder_stack,
                                     stack_mask, text_cos_sin, with_layer_views)
from omni_jax.ops.linear import linear, mlp2
from omni_jax.ops.norms import rms_norm
from omni_jax.weights.rules import Rule, copy_rule, linear_rule, prefixed


class ResizeMLP(nnx.Module):
    """fc2(silu(fc1(x))) with biases: thinker width -> talker width (``Qwen3OmniMoeTalkerResizeMLP``)."""

    def __init__(self, d_in: int, d_mid: int, d_out: int, rngs: nnx.Rngs, dtype):
        self.fc1_w = normal(rngs, d_in, d_mid, axes=("embed", "mlp"), dtype=dtype)
        self.fc1_b = zeros(d_mid, axes=("mlp",), dtype=dtype)
        self.fc2_w = normal(rngs, d_mid, d_out, axes=("mlp", "embed"), dtype=dtype)
        self.fc2_b = zeros(d_out, axes=("norm",), dtype=dtype)


def resize_mlp(p: dict, x: jax.Array) -> jax.Array:
    return mlp2(x, p["fc1_w"], p["fc1_b"], p["fc2_w"], p["fc2_b"], "silu")


class Talker(nnx.Module):
    def __init__(self, cfg: TalkerConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        t = cfg.text
        self.text_projection = ResizeMLP(cfg.thinker_hidden_size, t.intermediate_size, t.hidden_size, rngs, dtype)
        self.hidden_projection = ResizeMLP(cfg.thinker_hidden_size, t.intermediate_size, t.hidden_size, rngs, dtype)
        self.codec_embedding = normal(rngs, t.vocab_size, t.hidden_size, axes=("vocab", "embed"), dtype=dtype)
        self.layers = DecoderLayers(t, rngs, dtype)
        self.norm = ones(t.hidden_size, axes=("norm",), dtype=dtype)
        self.codec_head = normal(rngs, t.hidden_size, t.vocab_size, axes=("embed", "vocab"), dtype=dtype)
        self.code_predictor = cp.CodePredictor(cfg.code_predictor, rngs=rngs, dtype=dtype)


def hf_rules(cfg: TalkerConfig) -> list[Rule]:
    """Names relative to ``talker.``."""
    rules = [
        copy_rule("model.codec_embedding.weight", "codec_embedding"),
        copy_rule("model.norm.weight", "norm"),
        linear_rule("codec_head.weight", "codec_head"),
        *decoder_layer_rules(cfg.text, "model.", "layers."),
    ]
    for proj in ("text_projection", "hidden_projection"):
        for fc in ("fc1", "fc2"):
            rules.append(linear_rule(f"{proj}.linear_{fc}.weight", f"{proj}.{fc}_w"))
            rules.append(copy_rule(f"{proj}.linear_{fc}.bias", f"{proj}.{fc}_b"))
    rules += prefixed(cp.hf_rules(cfg.code_predictor), "code_predictor.", "code_predictor.")
    return rules


def with_decode_views(params: dict) -> dict:
    """The Talker params with per-layer weight views of its decoder and its code predictor (aliasing the stacks,
    see ``decoder.with_layer_views`` and ``code_predictor.with_layer_views``). Same results."""
    return dict(params, layers=with_layer_views(params["layers"]),
                code_predictor=cp.with_layer_views(params["code_predictor"]))


def talker_forward(params: dict, cfg: TalkerConfig, opts: StackOptions, inputs_embeds: jax.Array,
                   position_ids: jax.Array, attention_mask: jax.Array, *, cache: KVCache | None = None,
                   logits_at: str = "all"):
    """One forward of the Talker decoder. Same contract as ``thinker_text.text_forward``; ``hidden`` is the
    final normed hidden state (the code predictor's ``past_hidden``)."""
    t = cfg.text
    dtype = inputs_embeds.dtype
    l = inputs_embeds.shape[1]
    cos, sin = text_cos_sin(position_ids, t, dtype)
    slot = 0 if cache is None else cache.length
    mask, valid = stack_mask(attention_mask, cache, slot, l)
    x, kv, stats, hidden = decoder_stack(params["layers"], inputs_embeds, cos, sin, mask, t, opts, cache=cache,
                                         slot=slot, token_mask=attention_mask.astype(bool))
    x = rms_norm(x, params["norm"], t.rms_norm_eps)
    new_cache = None if cache is None else KVCache(kv[0], kv[1], valid, cache.length + l)
    src = x if logits_at == "all" else x[:, -1:]
    logits = None if logits_at == "none" else linear(src, params["codec_head"])
    return dict(logits=logits, hidden=x, cache=new_cache, stats=stats, hidden_states=hidden)
