"""Code2Wav decoded incrementally: each call decodes only its new code frames and carries the decoder's state.

A stream of audio pieces decoded as windows (``Code2WavStreamer``'s window path, HF ``chunked_decode``)
decodes every piece's left context again: 4-frame pieces with 25 frames of context decode up to 29 frames per
4. Every stage of the decoder is causal, so the same samples come from decoding the new frames alone, given:

- the pre-transformer's keys and values of the frames so far (``k``, ``v``: [layers, B, capacity, heads, dim],
  at absolute positions, keys after RoPE; its causal sliding-window mask is applied on absolute positions);
- each causal conv's last ``(k-1)*dilation`` inputs (``history``; zeros at the start, the causal padding);
- each decoder block's transposed conv's last input (``previous``): its output for input sample m needs
  sample m + 1, so a call emits the samples of its inputs' predecessor and holds back the last one.

The first call (``first=True``) has no predecessor: its transposed convs emit one input sample fewer, so it
returns ``wav_length(n)`` samples, every later call ``total_upsample * n``; together ``wav_length(frames so
far)``, the samples of a one-shot ``decode`` of every frame so far, in order.

A call's frames may be right-padded to a static width (``valid`` of them are real): every stage is causal, so
padding changes no valid sample, and the state keeps the inputs of the valid frames only (dynamic slices at
the valid length). Keys of padded frames may sit in the cache past the valid ones: later frames overwrite
them before any query can see them (a query at position p sees keys at positions <= p only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.config import Code2WavConfig
from omni_jax.executables import program
from omni_jax.models.code2wav import (
    CONVNEXT_KERNEL,
    DECODER_KERNEL,
    PER_LAYER,
    RESIDUAL_DILATIONS,
    convnext_after_dwconv,
    embed_codes,
    layer_mlp,
    project_qkv,
    residual_unit_after_conv1,
    snake,
    trans_conv,
)
from omni_jax.ops.attention import attention
from omni_jax.ops.conv import conv1d_valid
from omni_jax.ops.linear import linear
from omni_jax.ops.norms import rms_norm
from omni_jax.ops.rope import rope_cos_sin


def history_shapes(cfg: Code2WavConfig) -> dict[str, tuple[int, int]]:
    """Every causal conv's history: name -> (samples kept, channels)."""
    h, d = cfg.hidden_size, cfg.decoder_dim
    shapes = {f"upsample{u}": (CONVNEXT_KERNEL - 1, h) for u in range(len(cfg.upsampling_ratios))}
    shapes["conv_in"] = (DECODER_KERNEL - 1, h)
    for b in range(len(cfg.upsample_rates)):
        for r, dilation in enumerate(RESIDUAL_DILATIONS):
            shapes[f"block{b}.res{r}"] = ((DECODER_KERNEL - 1) * dilation, d >> (b + 1))
    shapes["conv_out"] = (DECODER_KERNEL - 1, d >> len(cfg.upsample_rates))
    return shapes


def initial_state(cfg: Code2WavConfig, batch: int, capacity: int, dtype=jnp.float32) -> dict:
    """The state before the first frame: empty caches for ``capacity`` frames, zero histories (host arrays:
    building them compiles nothing)."""
    dtype = jnp.dtype(dtype)
    kv = np.zeros((cfg.num_layers, batch, capacity, cfg.num_kv_heads, cfg.head_dim), dtype)
    d = cfg.decoder_dim
    return dict(
        k=kv, v=kv,
        history={name: np.zeros((batch, n, c), dtype) for name, (n, c) in history_shapes(cfg).items()},
        previous={f"block{b}": np.zeros((batch, 1, d >> b), dtype) for b in range(len(cfg.upsample_rates))},
    )


def _last(x: jax.Array, end, n: int) -> jax.Array:
    """x[:, end - n: end] for a traced ``end``."""
    return jax.lax.dynamic_slice_in_dim(x, end - n, n, axis=1)


def _conv(history: jax.Array, x: jax.Array, w, b, valid, dilation: int = 1, groups: int = 1):
    """A causal conv continuing its history; returns (output, the history after the ``valid`` new inputs)."""
    n = history.shape[1]
    x = jnp.concatenate([history.astype(x.dtype), x], axis=1)
    return conv1d_valid(x, w, b, dilation, groups), _last(x, n + valid, n)


def _trans_conv(previous: jax.Array, x: jax.Array, p: dict, rate: int, valid, first: bool):
    """HF CausalTransConvNet (a ``Conv``'s params ``p``) continuing a sequence: (output, valid output samples,
    new ``previous``)."""
    if first:
        return trans_conv(p, x, rate), (valid - 1) * rate, _last(x, valid, 1)
    x = jnp.concatenate([previous, x], axis=1)
    return trans_conv(p, x, rate), valid * rate, _last(x, valid + 1, 1)


def _attention_layer(p: dict, h: jax.Array, k_cache, v_cache, start, cos, sin, mask, cfg: Code2WavConfig):
    b, t, _ = h.shape
    q, k, v = project_qkv(rms_norm(h, p["attn_norm"], cfg.rms_norm_eps), p, cos, sin, cfg)
    k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), start, axis=1)
    v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), start, axis=1)
    a = linear(attention(q, k_cache, v_cache, mask[None]).reshape(b, t, -1), p["o"])
    return layer_mlp(p, h + p["attn_scale"] * a, cfg.rms_norm_eps), k_cache, v_cache


def pre_transformer_after(params: dict, x: jax.Array, k, v, start, cfg: Code2WavConfig):
    """``code2wav.pre_transformer`` of frames at positions ``start ..`` given the caches of the earlier ones:
    (hidden [B, T, H], k, v)."""
    t, capacity = x.shape[1], k.shape[2]
    positions = start + jnp.arange(t)
    cos, sin = rope_cos_sin(positions[None], cfg.head_dim, cfg.rope_theta, x.dtype)
    keys = jnp.arange(capacity)[None, :]
    mask = keys <= positions[:, None]
    if cfg.sliding_window is not None:
        mask &= keys > positions[:, None] - cfg.sliding_window
    if PER_LAYER in params:  # per-layer weights read in place (``code2wav.with_layer_views``)
        ks, vs = [], []
        for i, p in enumerate(params[PER_LAYER]):
            x, ki, vi = _attention_layer(p, x, k[i], v[i], start, cos, sin, mask, cfg)
            ks.append(ki)
            vs.append(vi)
        k, v = jnp.stack(ks), jnp.stack(vs)
    else:
        def layer(h, pkv):
            p, ki, vi = pkv
            h, ki, vi = _attention_layer(p, h, ki, vi, start, cos, sin, mask, cfg)
            return h, (ki, vi)

        x, (k, v) = jax.lax.scan(layer, x, (params["layers"], k, v))
    return rms_norm(x, params["norm"], cfg.rms_norm_eps), k, v


def decode_after(params: dict, state: dict, codes: jax.Array, start, valid, cfg: Code2WavConfig, first: bool):
    """Decode code frames [B, Q, n] at positions ``start ..`` (the first ``valid`` real, the rest padding) after
    the frames ``state`` holds: (samples [B, wav_length(n) if first else total_upsample * n], new state).
    The valid samples are the first ``wav_length(valid)`` (first) or ``total_upsample * valid`` of them."""
    history, previous = dict(state["history"]), dict(state["previous"])
    x = embed_codes(params["code_embedding"], codes, cfg)
    x, k, v = pre_transformer_after(params, x, state["k"], state["v"], start, cfg)
    for u, factor in enumerate(cfg.upsampling_ratios):
        p = params[f"upsample{u}"]
        x = trans_conv(p["trans_conv"], x, factor)  # k = s: no look-ahead
        valid = valid * factor
        c = p["convnext"]
        y, history[f"upsample{u}"] = _conv(history[f"upsample{u}"], x, c["dwconv"]["w"], c["dwconv"]["b"], valid,
                                           groups=x.shape[-1])
        x = convnext_after_dwconv(c, x, y)
    x, history["conv_in"] = _conv(history["conv_in"], x, params["conv_in"]["w"], params["conv_in"]["b"], valid)
    for b, rate in enumerate(cfg.upsample_rates):
        p = params[f"block{b}"]
        x, valid, previous[f"block{b}"] = _trans_conv(previous[f"block{b}"], snake(p["snake"], x),
                                                      p["trans_conv"], rate, valid, first)
        for r, dilation in enumerate(RESIDUAL_DILATIONS):
            pr, name = p[f"res{r}"], f"block{b}.res{r}"
            y, history[name] = _conv(history[name], snake(pr["snake1"], x), pr["conv1"]["w"],
                                     pr["conv1"]["b"], valid, dilation)
            x = residual_unit_after_conv1(pr, x, y)
    y, history["conv_out"] = _conv(history["conv_out"], snake(params["snake_out"], x),
                                   params["conv_out"]["w"], params["conv_out"]["b"], valid)
    return jnp.clip(y[..., 0], -1.0, 1.0), dict(k=k, v=v, history=history, previous=previous)


decode_after_jit = program(decode_after, static_argnames=("cfg", "first"))
