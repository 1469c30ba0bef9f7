"""Code2Wav: 16 codebooks of 12.5 Hz codec frames -> 24 kHz waveform (HF ``Qwen3OmniMoeCode2Wav``).

codes [B, 16, T] int
  -> mean over quantizers of one shared table (per-quantizer offset q * codebook_size)     [B, T, H]
  -> 8 pre-norm transformer layers (causal sliding window, LayerScale, 1-D RoPE, no q/k norm), final RMSNorm
  -> 2 x (CausalTransConv k=s=2, ConvNeXt block)                                            [B, 4T, H]
  -> CausalConv(H -> D, k=7) -> 4 x DecoderBlock(SnakeBeta, CausalTransConv(k=2r, s=r), 3 ResidualUnits)
  -> SnakeBeta -> CausalConv(-> 1, k=7) -> clamp(-1, 1)                                     [B, 1920 T - 555]

Activations are channels-last ``[B, T, C]`` throughout (see omni_jax/ops/conv.py for the kernel layout).
The maths are pure functions of ``pure_params(module)``; the transformer layers are stacked and scanned.

Streaming: ``chunked_decode`` reproduces HF's ``Code2Wav.chunked_decode`` (fixed chunks with left context) and
``Code2WavStreamer`` yields the same pieces as frames arrive, jitting one static window shape. Both rely on the
decoder being *prefix-consistent*: decoding ``T + p`` frames and keeping the first ``wav_length(T)`` samples gives
exactly the decode of ``T`` frames (every stage is causal except the transposed convs, whose one-frame look-ahead
is cut off by their trims), so a short last chunk is padded on the right to the static shape and cut back.
"""

from __future__ import annotations

import math
import weakref
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omni_jax.config import Code2WavConfig
from omni_jax.errors import UsageError
from omni_jax.executables import program
from omni_jax.models.common import (
    bias_axis,
    full,
    normal,
    ones,
    pure_params,
    shape_only_init,
    stack_views,
    zeros,
)
from omni_jax.ops.activations import gelu, snake_beta
from omni_jax.ops.attention import attention
from omni_jax.ops.conv import (
    causal_conv1d,
    causal_trans_conv1d,
    conv_weight_from_hf,
    conv_weight_to_hf,
    depthwise_causal_conv1d,
    polyphase_weight,
    trans_conv_weight_from_hf,
    trans_conv_weight_to_hf,
)
from omni_jax.ops.linear import linear, swiglu_mlp
from omni_jax.ops.norms import layer_norm, rms_norm
from omni_jax.ops.rope import apply_rope, rope_cos_sin
from omni_jax.sharding import to_host
from omni_jax.weights.rules import Rule, copy_rule, linear_rule

RESIDUAL_DILATIONS = (1, 3, 9)
CONVNEXT_KERNEL = 7
DECODER_KERNEL = 7
CONVNEXT_LN_EPS = 1e-6


class Code2WavInputError(UsageError):
    """Codes that Code2Wav cannot decode (wrong rank, wrong number of quantizers, out-of-range ids)."""


# --------------------------------------------------------------------------------------------- parameters

class Conv(nnx.Module):
    """A 1-D conv kernel [k, C_in/groups, C_out] and its bias; ``axes``: the logical axes of (C_in, C_out)."""

    def __init__(self, rngs: nnx.Rngs, k: int, c_in: int, c_out: int, axes: tuple = ("channels", None),
                 dtype=jnp.float32):
        self.w = normal(rngs, k, c_in, c_out, axes=(None,) + tuple(axes), dtype=dtype, std=1.0 / math.sqrt(k * c_in))
        self.b = zeros(c_out, axes=(bias_axis(axes[1]),), dtype=dtype)


class Snake(nnx.Module):
    """SnakeBeta's per-channel log(alpha), log(beta) (HF ``alpha``/``beta``; zeros -> alpha = beta = 1)."""

    def __init__(self, channels: int, dtype=jnp.float32):
        self.log_alpha = zeros(channels, axes=("norm",), dtype=dtype)
        self.log_beta = zeros(channels, axes=("norm",), dtype=dtype)


class ConvNeXt(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dim: int, dtype=jnp.float32):
        self.dwconv = Conv(rngs, CONVNEXT_KERNEL, 1, dim, (None, "channels"), dtype)
        self.norm_w = ones(dim, axes=("norm",), dtype=dtype)
        self.norm_b = zeros(dim, axes=("norm",), dtype=dtype)
        self.fc1_w = normal(rngs, dim, 4 * dim, axes=("embed", "mlp"), dtype=dtype)
        self.fc1_b = zeros(4 * dim, axes=("mlp",), dtype=dtype)
        self.fc2_w = normal(rngs, 4 * dim, dim, axes=("mlp", "embed"), dtype=dtype)
        self.fc2_b = zeros(dim, axes=("norm",), dtype=dtype)
        self.gamma = full(1e-6, dim, axes=("norm",), dtype=dtype)


class UpsampleStage(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dim: int, factor: int, dtype=jnp.float32):
        self.trans_conv = Conv(rngs, factor, dim, dim, ("embed", "mlp"), dtype)
        self.convnext = ConvNeXt(rngs, dim, dtype)


class ResidualUnit(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dim: int, dtype=jnp.float32):
        self.snake1 = Snake(dim, dtype)
        self.conv1 = Conv(rngs, DECODER_KERNEL, dim, dim, dtype=dtype)
        self.snake2 = Snake(dim, dtype)
        self.conv2 = Conv(rngs, 1, dim, dim, dtype=dtype)


class DecoderBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, c_in: int, c_out: int, rate: int, dtype=jnp.float32):
        self.snake = Snake(c_in, dtype)
        self.trans_conv = Conv(rngs, 2 * rate, c_in, c_out, dtype=dtype)
        for r in range(len(RESIDUAL_DILATIONS)):
            setattr(self, f"res{r}", ResidualUnit(rngs, c_out, dtype))


class TransformerLayers(nnx.Module):
    """The pre_transformer's layers, stacked on a leading [num_layers] axis."""

    def __init__(self, cfg: Code2WavConfig, rngs: nnx.Rngs, dtype=jnp.float32):
        n, h, i = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
        q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        norm = ("layers", "norm")
        self.attn_norm = ones(n, h, axes=norm, dtype=dtype)
        self.q = normal(rngs, n, h, q_dim, axes=("layers", "embed", "heads"), dtype=dtype)
        self.k = normal(rngs, n, h, kv_dim, axes=("layers", "embed", "kv_heads"), dtype=dtype)
        self.v = normal(rngs, n, h, kv_dim, axes=("layers", "embed", "kv_heads"), dtype=dtype)
        self.o = normal(rngs, n, q_dim, h, axes=("layers", "heads", "embed"), dtype=dtype)
        self.attn_scale = full(cfg.layer_scale_initial_scale, n, h, axes=norm, dtype=dtype)
        self.mlp_norm = ones(n, h, axes=norm, dtype=dtype)
        self.gate_up = normal(rngs, n, h, 2 * i, axes=("layers", "embed", "mlp"), dtype=dtype)
        self.down = normal(rngs, n, i, h, axes=("layers", "mlp", "embed"), dtype=dtype)
        self.mlp_scale = full(cfg.layer_scale_initial_scale, n, h, axes=norm, dtype=dtype)


class Code2Wav(nnx.Module):
    """Parameters of HF ``Qwen3OmniMoeCode2Wav``; ``__call__`` decodes codes [B, Q, T] to a waveform [B, samples]."""

    def __init__(self, cfg: Code2WavConfig, rngs: nnx.Rngs | None = None, dtype=jnp.float32):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.cfg = cfg
        h, d = cfg.hidden_size, cfg.decoder_dim
        self.code_embedding = normal(rngs, cfg.num_quantizers * cfg.codebook_size, h, axes=("vocab", "embed"),
                                     dtype=dtype)
        self.layers = TransformerLayers(cfg, rngs, dtype)
        self.norm = ones(h, axes=("norm",), dtype=dtype)
        for u, factor in enumerate(cfg.upsampling_ratios):
            setattr(self, f"upsample{u}", UpsampleStage(rngs, h, factor, dtype))
        self.conv_in = Conv(rngs, DECODER_KERNEL, h, d, ("embed", "mlp"), dtype)
        for b, rate in enumerate(cfg.upsample_rates):
            setattr(self, f"block{b}", DecoderBlock(rngs, d >> b, d >> (b + 1), rate, dtype))
        out_dim = d >> len(cfg.upsample_rates)
        self.snake_out = Snake(out_dim, dtype)
        self.conv_out = Conv(rngs, DECODER_KERNEL, out_dim, 1, dtype=dtype)

    @classmethod
    def abstract(cls, cfg: Code2WavConfig, dtype=jnp.float32) -> "Code2Wav":
        """Shapes only (no random init, nothing compiled): the starting point for loading a checkpoint."""
        with shape_only_init():
            return nnx.eval_shape(lambda: cls(cfg, nnx.Rngs(0), dtype))

    def __call__(self, codes) -> jax.Array:
        check_codes(codes, self.cfg)
        return decode_jit(pure_params(self), jnp.asarray(codes, jnp.int32), self.cfg)

    def chunked_decode(self, codes, chunk_size: int = 300, left_context: int = 25) -> np.ndarray:
        return chunked_decode(pure_params(self), codes, self.cfg, chunk_size, left_context)

    def stream(self, frames: Iterable, chunk_size: int = 300, left_context: int = 25) -> Iterator[np.ndarray]:
        return stream_decode(pure_params(self), frames, self.cfg, chunk_size, left_context)


# --------------------------------------------------------------------------------------------- pure maths

def wav_length(num_frames: int, cfg: Code2WavConfig) -> int:
    """Samples out for ``num_frames`` codec frames (1920 T - 555 for the real config)."""
    n = num_frames
    for r in cfg.upsampling_ratios:  # k = s: no trim
        n = n * r
    for r in cfg.upsample_rates:  # k = 2r, trim r on both ends: (n - 1) * r + 2r - 2r
        n = (n - 1) * r
    return n


def total_upsample(cfg: Code2WavConfig) -> int:
    return int(np.prod(cfg.upsampling_ratios + cfg.upsample_rates))


def check_codes(codes, cfg: Code2WavConfig) -> None:
    shape = np.shape(codes)
    if len(shape) != 3 or shape[1] != cfg.num_quantizers or shape[2] < 1:
        raise Code2WavInputError(
            f"codes must have shape [batch, {cfg.num_quantizers}, frames >= 1], got {tuple(shape)}")
    if isinstance(codes, np.ndarray) and codes.size and (codes.min() < 0 or codes.max() >= cfg.codebook_size):
        raise Code2WavInputError(
            f"codes must lie in [0, {cfg.codebook_size}), got range [{codes.min()}, {codes.max()}]")


def embed_codes(table: jax.Array, codes: jax.Array, cfg: Code2WavConfig) -> jax.Array:
    """codes [B, Q, T] -> mean over Q of table[codes + q * codebook_size] -> [B, T, H] (mean taken in fp32)."""
    offsets = (jnp.arange(cfg.num_quantizers, dtype=jnp.int32) * cfg.codebook_size)[None, :, None]
    e = jnp.take(table, codes + offsets, axis=0)  # [B, Q, T, H]
    return jnp.mean(e.astype(jnp.float32), axis=1).astype(table.dtype)


def sliding_window_mask(length: int, window: int | None) -> jax.Array:
    """[T, T] bool: query i sees key j iff i - window < j <= i (``window=None``: plain causal)."""
    i = jnp.arange(length)[:, None]
    j = jnp.arange(length)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= j > i - window
    return allowed


def project_qkv(x: jax.Array, p: dict, cos: jax.Array, sin: jax.Array, cfg: Code2WavConfig):
    """q [B, T, Hq, D], k and v [B, T, Hkv, D] of a layer's normed input (RoPE on q and k, no q/k norm)."""
    b, t, _ = x.shape
    hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q = apply_rope(linear(x, p["q"]).reshape(b, t, hq, d), cos, sin)
    k = apply_rope(linear(x, p["k"]).reshape(b, t, hkv, d), cos, sin)
    return q, k, linear(x, p["v"]).reshape(b, t, hkv, d)


def self_attention(x: jax.Array, p: dict, cos: jax.Array, sin: jax.Array, mask: jax.Array, cfg: Code2WavConfig):
    """Multi-head self-attention without q/k norm (HF eager: scores in activation dtype, softmax in fp32)."""
    b, t, _ = x.shape
    q, k, v = project_qkv(x, p, cos, sin, cfg)
    return linear(attention(q, k, v, mask[None]).reshape(b, t, -1), p["o"])


def layer_mlp(p: dict, h: jax.Array, eps: float) -> jax.Array:
    """A transformer layer's second half: h + LayerScale(SwiGLU(RMSNorm(h)))."""
    return h + p["mlp_scale"] * swiglu_mlp(rms_norm(h, p["mlp_norm"], eps), p["gate_up"], p["down"])


def pre_transformer(params: dict, x: jax.Array, cfg: Code2WavConfig) -> jax.Array:
    """8 LayerScale'd pre-norm layers (scanned) and the final RMSNorm. x [B, T, H]."""
    t = x.shape[1]
    cos, sin = rope_cos_sin(jnp.arange(t)[None], cfg.head_dim, cfg.rope_theta, x.dtype)
    mask = sliding_window_mask(t, cfg.sliding_window)
    eps = cfg.rms_norm_eps

    def layer(h, p):
        a = self_attention(rms_norm(h, p["attn_norm"], eps), p, cos, sin, mask, cfg)
        return layer_mlp(p, h + p["attn_scale"] * a, eps), None

    if PER_LAYER in params:  # per-layer weights read in place (``with_layer_views``), the 8 layers unrolled
        for p in params[PER_LAYER]:
            x, _ = layer(x, p)
    else:
        x, _ = jax.lax.scan(layer, x, params["layers"])
    return rms_norm(x, params["norm"], eps)


PER_LAYER = "per_layer"  # key of ``with_layer_views``'s per-layer transformer weights in the params


def with_layer_views(params: dict) -> dict:
    """The params plus, under ``PER_LAYER``, each transformer layer's weights as arrays of their own aliasing the
    stacks (``common.stack_views``: no copy; single-device CPU only, else the params as they are). Scanning
    the stacks copies every layer's weights (62 MB at real width) on every decode; the streamer decodes many
    windows, so it reads them in place through these views instead. With the views come each transposed conv's
    kernel in polyphase layout (``ops.conv.polyphase_weight``, 107 MB at real width), which the program would
    otherwise rearrange on every decode or run as a dilated conv. Same results."""
    if PER_LAYER in params:
        return params
    views = stack_views(params["layers"])
    if views is None:
        return params
    out = dict(params, **{PER_LAYER: views})
    for name in params:
        if name.startswith(("upsample", "block")):
            tc = params[name]["trans_conv"]
            stride = tc["w"].shape[0] // (1 if name.startswith("upsample") else 2)  # kernels s and 2s
            out[name] = dict(params[name], trans_conv=dict(tc, polyphase_w=_polyphase_kernel(tc["w"], stride)))
    return out


_POLYPHASE_KERNELS: dict = {}  # id(weight) -> (weakref to the weight, stride, its polyphase kernel)


def _polyphase_kernel(w: jax.Array, stride: int) -> jax.Array:
    """``polyphase_weight(w, stride)`` for a weight on one CPU device, rearranged by numpy (no XLA program to
    compile) once per weight: the generation calls ask for it on every call, and the weakref drops it with
    the weight."""
    hit = _POLYPHASE_KERNELS.get(id(w))
    if hit is not None and hit[0]() is w and hit[1] == stride:
        return hit[2]
    kernel = jax.device_put(np.ascontiguousarray(polyphase_weight(np.asarray(w), stride)), next(iter(w.devices())))
    key = id(w)
    _POLYPHASE_KERNELS[key] = (weakref.ref(w, lambda _: _POLYPHASE_KERNELS.pop(key, None)), stride, kernel)
    return kernel


def trans_conv(p: dict, x: jax.Array, stride: int) -> jax.Array:
    """``causal_trans_conv1d`` with a ``Conv``'s params ``p``, from its polyphase kernel where
    ``with_layer_views`` made one."""
    return causal_trans_conv1d(x, p["w"], p["b"], stride, p.get("polyphase_w"))


def convnext(p: dict, x: jax.Array) -> jax.Array:
    return convnext_after_dwconv(p, x, depthwise_causal_conv1d(x, p["dwconv"]["w"], p["dwconv"]["b"]))


def convnext_after_dwconv(p: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """The ConvNeXt block given its depthwise conv's output ``y``: x + gamma * MLP(LayerNorm(y))."""
    y = layer_norm(y, p["norm_w"], p["norm_b"], CONVNEXT_LN_EPS)
    y = linear(gelu(linear(y, p["fc1_w"], p["fc1_b"])), p["fc2_w"], p["fc2_b"])
    return x + p["gamma"] * y


def snake(p: dict, x: jax.Array) -> jax.Array:
    """SnakeBeta with one ``Snake`` module's parameters."""
    return snake_beta(x, p["log_alpha"], p["log_beta"])


def residual_unit(p: dict, x: jax.Array, dilation: int) -> jax.Array:
    y = causal_conv1d(snake(p["snake1"], x), p["conv1"]["w"], p["conv1"]["b"], dilation=dilation)
    return residual_unit_after_conv1(p, x, y)


def residual_unit_after_conv1(p: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """The residual unit given its dilated conv's output ``y``: x + conv2(SnakeBeta(y)) (conv2 has k = 1)."""
    return x + causal_conv1d(snake(p["snake2"], y), p["conv2"]["w"], p["conv2"]["b"])


def decoder_block(p: dict, x: jax.Array, rate: int) -> jax.Array:
    x = trans_conv(p["trans_conv"], snake(p["snake"], x), rate)
    for r, dilation in enumerate(RESIDUAL_DILATIONS):
        x = residual_unit(p[f"res{r}"], x, dilation)
    return x


def decode(params: dict, codes: jax.Array, cfg: Code2WavConfig) -> jax.Array:
    """codes [B, Q, T] int -> waveform [B, wav_length(T)] in the parameters' dtype, clamped to [-1, 1].

    One shot: attention scores are [B, heads, T, T] (the window is applied as a mask), fine for the streaming
    windows (left_context + chunk_size <= 325 frames); very long one-shot decodes should go through chunks.
    """
    x = embed_codes(params["code_embedding"], codes, cfg)
    x = pre_transformer(params, x, cfg)
    for u, factor in enumerate(cfg.upsampling_ratios):
        p = params[f"upsample{u}"]
        x = trans_conv(p["trans_conv"], x, factor)
        x = convnext(p["convnext"], x)
    x = causal_conv1d(x, params["conv_in"]["w"], params["conv_in"]["b"])
    for b, rate in enumerate(cfg.upsample_rates):
        x = decoder_block(params[f"block{b}"], x, rate)
    x = causal_conv1d(snake(params["snake_out"], x), params["conv_out"]["w"], params["conv_out"]["b"])
    return jnp.clip(x[..., 0], -1.0, 1.0)


decode_jit = jax.jit(decode, static_argnames=("cfg",))


# --------------------------------------------------------------------------------------------- streaming

def decode_window(params: dict, window: jax.Array, cfg: Code2WavConfig) -> jax.Array:
    """Decode a window of static shape [B, Q, n] (n: see ``Code2WavStreamer``): one compilation per width."""
    return decode(params, window, cfg)


decode_window_jit = program(decode_window, static_argnames=("cfg",))
WINDOW_BUCKET = 32  # frames: windows longer than SMALL_WINDOWS[-1] are padded to a multiple of this
SMALL_WINDOWS = (4, 8, 16)  # shorter windows are padded to the first of these that holds them


def window_width(frames: int, cap: int) -> int:
    """The static width a window of ``frames`` code frames is decoded at: the first of SMALL_WINDOWS that holds it,
    else ``frames`` rounded up to WINDOW_BUCKET; never more than ``cap`` (``left_context + chunk_size``).

    A stream's first pieces have little context (HF: ``min(left_context, start)``), so their windows are short:
    with 4-frame pieces and 25 frames of context the windows are 4, 8, 12, ... 28, then 29 frames. Padding
    all of them to 32 decoded up to 8x the frames (a 12-frame answer: 96 frames for 3 pieces, ~2 s at real
    width); these buckets decode 28 for at most 4 compiled widths (4, 8, 16, 29)."""
    frames = max(frames, 1)
    small = [w for w in SMALL_WINDOWS if w >= frames]
    width = small[0] if small else -(-frames // WINDOW_BUCKET) * WINDOW_BUCKET
    return min(cap, width)


def incremental_capacity(chunk_size: int, left_context: int) -> int:
    """Frames the incremental decoder's caches hold for a streamer: it runs while start <= left_context, on
    pieces padded to at most window_width(chunk_size)."""
    return left_context + window_width(chunk_size, left_context + chunk_size)


class Code2WavStreamer:
    """Incremental ``chunked_decode``: ``push`` code frames as the talker makes them, get audio pieces back.

    Every ``chunk_size`` new frames are decoded together with up to ``left_context`` earlier frames (HF's rule:
    ``context = min(left_context, start)``) and the context's samples are dropped, so the pieces are exactly the
    ones HF's ``chunked_decode`` concatenates. Every decode runs one jitted function on a window of static shape
    [B, Q, window_width(frames, left_context + chunk_size)] (short windows are right-padded; a few widths to
    compile at most; the decoder is prefix-consistent, see the module docstring) returning a [B, wav_length(width)] array; the piece (after the
    context's samples, as long as the chunk's frames give) is cut from it on the host.

    While a window would hold every frame so far (``start <= left_context``: a stream's first pieces, and the
    whole of any answer up to ``left_context + chunk_size`` frames), the new frames are decoded alone instead,
    with the decoder's state carried between pieces (``code2wav_incremental``): the same samples without
    decoding the context again. A 12-frame answer in 4-frame pieces decodes 12 frames, not 28 (4 + 8 + 16).
    """

    def __init__(self, params: dict, cfg: Code2WavConfig, chunk_size: int = 300, left_context: int = 25):
        if chunk_size < 1 or left_context < 0:
            raise ValueError(f"chunk_size must be >= 1 and left_context >= 0, got {chunk_size}, {left_context}")
        self.params, self.cfg = with_layer_views(params), cfg
        self.chunk_size, self.left_context = chunk_size, left_context
        self._frames: np.ndarray | None = None  # all frames seen so far that may still serve as context
        self._offset = 0  # absolute index of self._frames[..., 0]
        self._start = 0  # absolute index of the first frame not yet decoded
        self._state: dict | None = None  # the incremental decoder's state while every frame so far is context

    def _decode(self, end: int) -> np.ndarray:
        if self._start <= self.left_context:
            return self._decode_incrementally(end)
        self._state = None
        start = self._start
        context = min(self.left_context, start)
        window = self._frames[..., start - context - self._offset: end - self._offset]
        # a window of left_context + chunk_size frames, or a shorter one padded to a few widths (window_width):
        # few shapes to compile, and short windows do not decode many frames of padding
        size = window_width(window.shape[-1], self.left_context + self.chunk_size)
        pad = size - window.shape[-1]
        window = np.pad(window, ((0, 0), (0, 0), (0, pad)))
        wav = to_host(decode_window_jit(self.params, jnp.asarray(window, jnp.int32), cfg=self.cfg))
        self._advance(end)
        first = context * total_upsample(self.cfg)  # HF drops the context frames' samples
        return wav[:, first: first + wav_length(end - start, self.cfg)]

    def _decode_incrementally(self, end: int) -> np.ndarray:
        """While the window would hold every frame so far (start <= left_context), decode only the new frames
        (``code2wav_incremental``): same samples, without decoding the context again."""
        from omni_jax.models.code2wav_incremental import decode_after_jit, initial_state

        start = self._start
        frames = self._frames[..., start - self._offset: end - self._offset]
        n = frames.shape[-1]
        width = window_width(n, self.left_context + self.chunk_size)
        if start == 0:
            capacity = incremental_capacity(self.chunk_size, self.left_context)
            self._state = initial_state(self.cfg, frames.shape[0], capacity, self.params["code_embedding"].dtype)
        frames = np.pad(frames, ((0, 0), (0, 0), (0, width - n)))
        wav, self._state = decode_after_jit(self.params, self._state, jnp.asarray(frames, jnp.int32),
                                            np.int32(start), np.int32(n), cfg=self.cfg, first=start == 0)
        wav = to_host(wav)
        self._advance(end)
        if start == 0:
            return wav[:, :wav_length(n, self.cfg)]
        # samples wav_length(start) .. of the whole sequence; HF's chunks drop the first
        # total_upsample - wav_length(1) of them (a window's last frame's samples wait for the next frame)
        lost = total_upsample(self.cfg) - wav_length(1, self.cfg)
        return wav[:, lost: total_upsample(self.cfg) * n]

    def _advance(self, end: int) -> None:
        """Frames before ``end`` are decoded; keep only those that may still serve as context."""
        self._start = end
        keep_from = max(end - self.left_context, 0)
        self._frames = self._frames[..., keep_from - self._offset:]
        self._offset = keep_from

    def push(self, frames) -> list[np.ndarray]:
        """frames [B, Q, n] (or [B, Q] for one frame); returns the audio pieces completed by them."""
        frames = np.asarray(frames)
        if frames.ndim == 2:
            frames = frames[..., None]
        check_codes(frames, self.cfg)
        self._frames = frames if self._frames is None else np.concatenate([self._frames, frames], axis=-1)
        out = []
        while self._offset + self._frames.shape[-1] - self._start >= self.chunk_size:
            out.append(self._decode(self._start + self.chunk_size))
        return out

    def flush(self) -> list[np.ndarray]:
        """Decode the frames left over (fewer than ``chunk_size``); call once at the end."""
        if self._frames is None:
            return []
        end = self._offset + self._frames.shape[-1]
        return [self._decode(end)] if end > self._start else []


def stream_decode(params: dict, frames: Iterable, cfg: Code2WavConfig, chunk_size: int = 300,
                  left_context: int = 25) -> Iterator[np.ndarray]:
    """Generator: consume code frames ([B, Q] or [B, Q, n] each), yield waveform pieces [B, samples]."""
    streamer = Code2WavStreamer(params, cfg, chunk_size, left_context)
    for f in frames:
        yield from streamer.push(f)
    yield from streamer.flush()


def chunked_decode(params: dict, codes, cfg: Code2WavConfig, chunk_size: int = 300,
                   left_context: int = 25) -> np.ndarray:
    """HF ``Code2Wav.chunked_decode``: [B, Q, T] -> [B, sum over chunks of wav_length(chunk)]."""
    codes = np.asarray(codes)
    check_codes(codes, cfg)
    return np.concatenate(list(stream_decode(params, [codes], cfg, chunk_size, left_context)), axis=-1)


# --------------------------------------------------------------------------------------------- HF names

def _conv_rule(hf: str, param: str, transposed: bool = False) -> list[Rule]:
    to_p, to_h = (trans_conv_weight_from_hf, trans_conv_weight_to_hf) if transposed else (
        conv_weight_from_hf, conv_weight_to_hf)
    return [Rule(f"{hf}.conv.weight", f"{param}.w", to_param=to_p, to_hf=to_h),
            copy_rule(f"{hf}.conv.bias", f"{param}.b")]


def _snake_rules(hf: str, param: str) -> list[Rule]:
    return [copy_rule(f"{hf}.alpha", f"{param}.log_alpha"), copy_rule(f"{hf}.beta", f"{param}.log_beta")]


def hf_rules(cfg: Code2WavConfig) -> list[Rule]:
    """HF names relative to ``code2wav.`` <-> parameter paths relative to ``Code2Wav``."""
    n = (cfg.num_layers,)
    lay = "pre_transformer.layers.{layer}."
    rules = [
        copy_rule("code_embedding.weight", "code_embedding"),
        copy_rule("pre_transformer.norm.weight", "norm"),
        copy_rule(lay + "input_layernorm.weight", "layers.attn_norm", ("layer",), n),
        copy_rule(lay + "post_attention_layernorm.weight", "layers.mlp_norm", ("layer",), n),
        copy_rule(lay + "self_attn_layer_scale.scale", "layers.attn_scale", ("layer",), n),
        copy_rule(lay + "mlp_layer_scale.scale", "layers.mlp_scale", ("layer",), n),
        linear_rule(lay + "mlp.gate_proj.weight", "layers.gate_up", ("layer",), n, part=(0, 2)),
        linear_rule(lay + "mlp.up_proj.weight", "layers.gate_up", ("layer",), n, part=(1, 2)),
        linear_rule(lay + "mlp.down_proj.weight", "layers.down", ("layer",), n),
    ]
    for proj in "qkvo":
        rules.append(linear_rule(lay + f"self_attn.{proj}_proj.weight", f"layers.{proj}", ("layer",), n))
    for u in range(len(cfg.upsampling_ratios)):
        hf, ours = f"upsample.{u}", f"upsample{u}"
        rules += _conv_rule(f"{hf}.0", f"{ours}.trans_conv", transposed=True)
        rules += _conv_rule(f"{hf}.1.dwconv", f"{ours}.convnext.dwconv")
        rules += [
            copy_rule(f"{hf}.1.norm.weight", f"{ours}.convnext.norm_w"),
            copy_rule(f"{hf}.1.norm.bias", f"{ours}.convnext.norm_b"),
            linear_rule(f"{hf}.1.pwconv1.weight", f"{ours}.convnext.fc1_w"),
            copy_rule(f"{hf}.1.pwconv1.bias", f"{ours}.convnext.fc1_b"),
            linear_rule(f"{hf}.1.pwconv2.weight", f"{ours}.convnext.fc2_w"),
            copy_rule(f"{hf}.1.pwconv2.bias", f"{ours}.convnext.fc2_b"),
            copy_rule(f"{hf}.1.gamma", f"{ours}.convnext.gamma"),
        ]
    rules += _conv_rule("decoder.0", "conv_in")
    for b in range(len(cfg.upsample_rates)):
        hf, ours = f"decoder.{b + 1}.block", f"block{b}"
        rules += _snake_rules(f"{hf}.0", f"{ours}.snake")
        rules += _conv_rule(f"{hf}.1", f"{ours}.trans_conv", transposed=True)
        for r in range(len(RESIDUAL_DILATIONS)):
            unit, mine = f"{hf}.{r + 2}", f"{ours}.res{r}"
            rules += _snake_rules(f"{unit}.act1", f"{mine}.snake1") + _snake_rules(f"{unit}.act2", f"{mine}.snake2")
            rules += _conv_rule(f"{unit}.conv1", f"{mine}.conv1") + _conv_rule(f"{unit}.conv2", f"{mine}.conv2")
    last = len(cfg.upsample_rates) + 1
    rules += _snake_rules(f"decoder.{last}", "snake_out")
    rules += _conv_rule(f"decoder.{last + 1}", "conv_out")
    return rules
