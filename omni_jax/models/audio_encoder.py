"""The audio encoder (AuT, ``thinker.audio_tower``): log-mel frames -> audio embeddings for the Thinker.

Reproduces ``Qwen3OmniMoeAudioEncoder`` as ``get_audio_features`` calls it:

1. every audio is cut into chunks of ``2 * n_window = 100`` frames (the last one partial); all chunks of the
   batch are zero-padded to the *longest chunk of the batch* (100 as soon as any audio has 100 frames);
2. conv stem: three Conv2d(3x3, stride 2, pad 1) + GELU over (mel, time), 128 -> 16 mel rows, 100 -> 13 steps;
   a partial chunk's last outputs see conv outputs computed over that zero padding (``gelu(bias) != 0``);
3. flatten channels x mel (index ``c * 16 + f``), ``conv_out`` (no bias), sinusoid positions 0..12 added to
   *every chunk* (they restart per chunk);
4. the padded steps are dropped; attention is bidirectional within windows of
   ``n_window_infer // (2 * n_window) = 8`` chunks (104 tokens) of one audio, never across windows or audios;
5. 32 pre-LN encoder layers (scanned), ``ln_post``, ``proj1``, GELU, ``proj2`` -> (tokens, 2048).

Static shapes. The forward keeps a per-audio grid instead of HF's packed list: features ``(B, 128, T)`` are
cut into ``C = ceil(T / 800) * 8`` chunks per audio (T rounded up to whole attention windows), so the
compiled shapes depend only on ``(B, ceil(T / 800))``; the frame counts are traced values. Frames beyond an
audio's count are zeroed (the reference's padding), and the batch-wide "pad to the longest chunk" width is
reproduced with a traced scalar: each conv layer's outputs beyond the width the reference would have are
zeroed before the next layer, which is exactly the reference's zero padding. Windows are 8 chunks x 13
slots; empty slots are masked keys, so attention is one batched (B * windows, 104, 104) product — a
block-diagonal mask over the audio's tokens without ever materialising it. Because every chunk but an
audio's last is full, an audio's valid tokens are a *prefix* of its row: the output is ``(B, C * 13, 2048)``
with ``audio_token_counts(frame_counts)`` valid rows per audio (computed on the host), and
``pack_audio_embeddings`` concatenates those prefixes into the reference's ``(sum tokens, 2048)``.
Use ``bucket_frames`` to round T up to a few sizes so a jitted encoder compiles rarely. (HF sizes its
window as ``max tokens per chunk x 8``; when every audio is shorter than one chunk that is smaller than 104,
but then each audio is one chunk inside one window either way.)

Numerics: matmuls and convs accumulate in fp32 and round once to the compute dtype (torch's bf16 CPU
kernels do the same, and XLA:CPU runs such dots ~3x faster than bf16-result dots); LayerNorm and softmax in
fp32. On CPU the stem convs run as nine strided-slice matmuls (``conv_by_taps``, ~1.5x XLA's conv there).

    feats = load_features(paths)                                  # omni_jax.processing.audio
    x = np.pad(feats.input_features, ((0, 0), (0, 0), (0, bucket_frames(T) - T)))
    out = encode(params, x, feats.frame_counts, cfg=cfg)          # (B, C * 13, 2048)
    embeds = pack_audio_embeddings(out, audio_token_counts(feats.frame_counts, cfg))  # (sum tokens, 2048)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omni_jax.config import AudioConfig
from omni_jax.models.common import bias_axis, normal, ones, pure_params, zeros
from omni_jax.ops.activations import ACTIVATIONS
from omni_jax.ops.attention import attention
from omni_jax.ops.linear import linear
from omni_jax.ops.norms import layer_norm
from omni_jax.weights.rules import Rule, copy_rule, linear_rule

LN_EPS = 1e-5


# -------------------------------------------------------------------------------------------- geometry


def conv_out_len(n):
    """Length after one Conv(kernel 3, stride 2, pad 1): ceil(n / 2) (works on ints, numpy and jax arrays)."""
    return (n - 1) // 2 + 1


def stem_out_len(n):
    """Time steps after the three-conv stem (100 -> 13; 0 -> 0)."""
    return conv_out_len(conv_out_len(conv_out_len(n)))


def mel_rows_after_stem(num_mel_bins: int) -> int:
    return conv_out_len(conv_out_len(conv_out_len(num_mel_bins)))


def chunk_frames(cfg: AudioConfig) -> int:
    return 2 * cfg.n_window


def chunks_per_window(cfg: AudioConfig) -> int:
    return max(1, cfg.n_window_infer // chunk_frames(cfg))


def tokens_per_chunk(cfg: AudioConfig) -> int:
    return stem_out_len(chunk_frames(cfg))


def audio_token_counts(frame_counts, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """Encoder output tokens per audio (host side): full chunks x 13 + the stem length of the remainder."""
    n = np.asarray(frame_counts, dtype=np.int64)
    cl = chunk_frames(cfg)
    return (n // cl) * tokens_per_chunk(cfg) + stem_out_len(n % cl)


def bucket_frames(n_frames: int, cfg: AudioConfig = AudioConfig(), pow2: bool = True) -> int:
    """A padded frame count for jit: whole attention windows (800 frames), optionally a power of two of them."""
    window = chunk_frames(cfg) * chunks_per_window(cfg)
    windows = max(1, math.ceil(n_frames / window))
    if pow2:
        windows = 1 << (windows - 1).bit_length()
    return windows * window


def sinusoid_positions(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """The reference's SinusoidsPositionEmbedding rows 0..length-1: [sin | cos], float32."""
    inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2, dtype=np.float32)).astype(np.float32)
    t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------- module


class _Bag(nnx.Module):
    """A named group of parameters (gives the dotted parameter paths, e.g. ``layers.attn.qkv.w``)."""

    def __init__(self, **children):
        for name, child in children.items():
            setattr(self, name, child)


def _linear_params(rngs, *shape, axes: tuple, bias=True, dtype=jnp.float32):
    fan_in = shape[-2]
    lead_axes = ("layers",) * (len(shape) - 2)
    w = normal(rngs, *shape, axes=lead_axes + tuple(axes), dtype=dtype, std=1.0 / math.sqrt(fan_in))
    if not bias:
        return _Bag(w=w)
    return _Bag(w=w, b=zeros(*shape[:-2], shape[-1], axes=lead_axes + (bias_axis(axes[1]),), dtype=dtype))


def _norm_params(*lead, dim, dtype=jnp.float32):
    axes = ("layers",) * len(lead) + ("norm",)
    return _Bag(w=ones(*lead, dim, axes=axes, dtype=dtype), b=zeros(*lead, dim, axes=axes, dtype=dtype))


def _conv_params(rngs, c_in, c_out, dtype=jnp.float32):
    # the stem's channels (480 in the real model) are split only where the mesh divides them
    axes = (None, None, None, "channels") if c_in == 1 else (None, None, "channels", None)
    w = normal(rngs, 3, 3, c_in, c_out, axes=axes, dtype=dtype, std=1.0 / math.sqrt(9 * c_in))
    return _Bag(w=w, b=zeros(c_out, axes=("norm",), dtype=dtype))


class AudioEncoder(nnx.Module):
    """Parameters of the audio encoder; ``__call__`` runs :func:`audio_encoder_forward` on them."""

    def __init__(self, cfg: AudioConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        if cfg.activation_function not in ACTIVATIONS:
            raise ValueError(f"audio activation {cfg.activation_function!r} unsupported")
        if cfg.d_model % cfg.encoder_attention_heads:
            raise ValueError(f"d_model {cfg.d_model} not divisible by {cfg.encoder_attention_heads} heads")
        self.cfg = cfg
        c, d, L = cfg.downsample_hidden_size, cfg.d_model, cfg.encoder_layers
        self.conv1 = _conv_params(rngs, 1, c, dtype)
        self.conv2 = _conv_params(rngs, c, c, dtype)
        self.conv3 = _conv_params(rngs, c, c, dtype)
        self.conv_out = _linear_params(rngs, c * mel_rows_after_stem(cfg.num_mel_bins), d, axes=(None, "embed"),
                                       bias=False, dtype=dtype)
        self.layers = _Bag(
            attn_norm=_norm_params(L, dim=d, dtype=dtype),
            attn=_Bag(qkv=_linear_params(rngs, L, d, 3 * d, axes=("embed", "heads"), dtype=dtype),
                      out=_linear_params(rngs, L, d, d, axes=("heads", "embed"), dtype=dtype)),
            mlp_norm=_norm_params(L, dim=d, dtype=dtype),
            fc1=_linear_params(rngs, L, d, cfg.encoder_ffn_dim, axes=("embed", "mlp"), dtype=dtype),
            fc2=_linear_params(rngs, L, cfg.encoder_ffn_dim, d, axes=("mlp", "embed"), dtype=dtype),
        )
        self.ln_post = _norm_params(dim=d, dtype=dtype)
        self.proj1 = _linear_params(rngs, d, d, axes=("embed", "mlp"), dtype=dtype)
        self.proj2 = _linear_params(rngs, d, cfg.output_dim, axes=("mlp", "embed"), dtype=dtype)

    def __call__(self, features, frame_counts, dtype=None):
        """Jitted :func:`audio_encoder_forward` on this module's parameters (see ``encode``)."""
        return encode(pure_params(self), features, frame_counts, cfg=self.cfg, dtype=dtype)


# --------------------------------------------------------------------------------------------- forward


def conv_by_taps() -> bool:
    """Whether the stem convs run as nine strided-slice matmuls (on CPU ~1.5x faster than XLA's conv)."""
    return jax.default_backend() == "cpu"


def _conv2d_s2(x, p, dtype):
    """Conv2d(3x3, stride 2, padding 1) + bias, NHWC with H = mel, W = time."""
    w = p["w"].astype(dtype)
    if conv_by_taps():
        n, h, t, _ = x.shape
        ho, to = conv_out_len(h), conv_out_len(t)
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        y = sum(jnp.einsum("nhtc,co->nhto", xp[:, i: i + 2 * ho: 2, j: j + 2 * to: 2, :], w[i, j],
                           preferred_element_type=jnp.float32)
                for i in range(3) for j in range(3))
    else:
        y = jax.lax.conv_general_dilated(x, w, window_strides=(2, 2), padding=((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         preferred_element_type=jnp.float32)
    return (y + p["b"].astype(jnp.float32)).astype(dtype)


def conv_stem(params, chunks, width, cfg: AudioConfig, dtype):
    """chunks (N, mel, 100) zero beyond each chunk's frames; ``width`` (traced) = the batch's longest chunk.

    Returns (N, 13, d_model): conv stem, flatten (c * 16 + f), conv_out (positions are added by the caller).
    Like the reference, more than ``conv_chunksize`` chunks are processed in groups of that many (a
    ``lax.map``), which bounds the stem's activation memory for long audio.
    """
    if chunks.shape[0] > cfg.conv_chunksize:
        one = lambda c: _conv_stem_batch(params, c[None], width, cfg, dtype)[0]  # noqa: E731
        return jax.lax.map(one, chunks, batch_size=cfg.conv_chunksize)
    return _conv_stem_batch(params, chunks, width, cfg, dtype)


def _conv_stem_batch(params, chunks, width, cfg: AudioConfig, dtype):
    act = ACTIVATIONS[cfg.activation_function]
    x = chunks.astype(dtype)[..., None]  # (N, mel, time, 1)
    for name in ("conv1", "conv2", "conv3"):
        x = act(_conv2d_s2(x, params[name], dtype))
        width = conv_out_len(width)
        # the reference's tensor ends at `width`: beyond it the next conv reads its zero padding
        x = jnp.where((jnp.arange(x.shape[2]) < width)[None, None, :, None], x, jnp.zeros((), x.dtype))
    n, f, t, c = x.shape
    x = jnp.transpose(x, (0, 2, 3, 1)).reshape(n, t, c * f)  # index c * f_rows + f, as HF's permute + view
    return linear(x, params["conv_out"]["w"])


def chunk_positions(n_chunks: int, tokens: int, d_model: int) -> np.ndarray:
    """(n_chunks, tokens, d_model) position rows added to each chunk: 0..tokens-1 in *every* chunk."""
    return np.broadcast_to(sinusoid_positions(tokens, d_model)[None], (n_chunks, tokens, d_model))


def _attention(x, p, valid, num_heads, dtype):
    """Bidirectional MHA within each window: x (W, S, D); valid (W, S) marks real tokens (keys)."""
    w, s, d = x.shape
    qkv = linear(x, p["qkv"]["w"], p["qkv"]["b"])
    q, k, v = (a.reshape(w, s, num_heads, d // num_heads) for a in jnp.split(qkv, 3, axis=-1))
    # the reference: bf16 scores (fp32-accumulated), scaled in bf16, softmax in fp32, probabilities back to bf16
    out = attention(q, k, v, valid[:, None, :], float32_dots=True)
    return linear(out.reshape(w, s, d), p["out"]["w"], p["out"]["b"])


def encoder_layers(layers, x, valid, cfg: AudioConfig, dtype):
    """The pre-LN encoder stack, scanned over the leading layer axis."""
    act = ACTIVATIONS[cfg.activation_function]

    def layer(h, p):
        a = layer_norm(h, p["attn_norm"]["w"], p["attn_norm"]["b"], LN_EPS)
        h = h + _attention(a, p["attn"], valid, cfg.encoder_attention_heads, dtype)
        m = layer_norm(h, p["mlp_norm"]["w"], p["mlp_norm"]["b"], LN_EPS)
        h = h + linear(act(linear(m, p["fc1"]["w"], p["fc1"]["b"])), p["fc2"]["w"], p["fc2"]["b"])
        return h, None

    x, _ = jax.lax.scan(layer, x, layers)
    return x


def audio_encoder_forward(params, features, frame_counts, cfg: AudioConfig, dtype=None):
    """features (B, mel, T) padded log-mel batch, frame_counts (B,) valid frames per audio.

    Returns (B, C * 13, output_dim): row b holds audio b's ``audio_token_counts(frame_counts)[b]`` embeddings
    as a prefix (the rest is padding). ``dtype`` is the compute dtype (default: the parameters' dtype).
    """
    dtype = dtype or params["conv_out"]["w"].dtype
    b, mel, t = features.shape
    cl, k, tpc = chunk_frames(cfg), chunks_per_window(cfg), tokens_per_chunk(cfg)
    n_chunks = max(1, math.ceil(t / (cl * k))) * k
    lengths = jnp.asarray(frame_counts, jnp.int32).reshape(b)

    x = jnp.pad(features, ((0, 0), (0, 0), (0, n_chunks * cl - t)))
    frame_valid = jnp.arange(n_chunks * cl)[None, :] < lengths[:, None]  # (B, C * cl)
    x = jnp.where(frame_valid[:, None, :], x, jnp.zeros((), x.dtype))
    chunks = x.reshape(b, mel, n_chunks, cl).transpose(0, 2, 1, 3).reshape(b * n_chunks, mel, cl)
    width = jnp.minimum(cl, jnp.max(lengths))  # the reference pads all chunks to the batch's longest chunk

    h = conv_stem(params, chunks, width, cfg, dtype).reshape(b, n_chunks, tpc, cfg.d_model)
    h = h + jnp.asarray(chunk_positions(n_chunks, tpc, cfg.d_model)).astype(h.dtype)[None]

    chunk_len = jnp.clip(lengths[:, None] - cl * jnp.arange(n_chunks)[None, :], 0, cl)  # (B, C)
    token_valid = jnp.arange(tpc)[None, None, :] < stem_out_len(chunk_len)[..., None]  # (B, C, tpc)
    windows = n_chunks // k
    h = h.reshape(b * windows, k * tpc, cfg.d_model)
    valid = token_valid.reshape(b * windows, k * tpc)

    h = encoder_layers(params["layers"], h, valid, cfg, dtype)
    h = layer_norm(h, params["ln_post"]["w"], params["ln_post"]["b"], LN_EPS)
    h = ACTIVATIONS[cfg.activation_function](linear(h, params["proj1"]["w"], params["proj1"]["b"]))
    h = linear(h, params["proj2"]["w"], params["proj2"]["b"])
    return h.reshape(b, n_chunks * tpc, cfg.output_dim)


# ``audio_encoder_forward`` under jit: one compilation per (B, frames, cfg, dtype); bucket the frames.
encode = jax.jit(audio_encoder_forward, static_argnames=("cfg", "dtype"))


def pack_audio_embeddings(embeddings, token_counts) -> jax.Array:
    """Concatenate each audio's valid prefix: (B, N, D) + host counts -> (sum counts, D), HF's packed layout."""
    token_counts = np.asarray(token_counts, dtype=np.int64)
    n = embeddings.shape[1]
    index = np.concatenate([i * n + np.arange(c) for i, c in enumerate(token_counts)]).astype(np.int32)
    return jnp.take(embeddings.reshape(-1, embeddings.shape[-1]), jnp.asarray(index), axis=0)


# --------------------------------------------------------------------------------------------- weights


def _conv_to_param(a: np.ndarray) -> np.ndarray:
    """torch Conv2d [out, in, kh, kw] -> ours [kh, kw, in, out]."""
    return np.ascontiguousarray(np.transpose(a, (2, 3, 1, 0)))


def _conv_to_hf(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(a, (3, 2, 0, 1)))


def hf_rules(cfg: AudioConfig) -> list[Rule]:
    """HF names relative to ``thinker.audio_tower.`` (on disk; ``thinker.model.audio_tower.`` in memory)."""
    L = ("layer",), (cfg.encoder_layers,)
    rules = []
    for i in (1, 2, 3):
        rules.append(Rule(f"conv2d{i}.weight", f"conv{i}.w", to_param=_conv_to_param, to_hf=_conv_to_hf))
        rules.append(copy_rule(f"conv2d{i}.bias", f"conv{i}.b"))
    rules.append(linear_rule("conv_out.weight", "conv_out.w"))
    for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
        rules.append(linear_rule(f"layers.{{layer}}.self_attn.{name}.weight", "layers.attn.qkv.w", *L, part=(j, 3)))
        rules.append(Rule(f"layers.{{layer}}.self_attn.{name}.bias", "layers.attn.qkv.b", *L, part=(j, 3)))
    rules.append(linear_rule("layers.{layer}.self_attn.out_proj.weight", "layers.attn.out.w", *L))
    rules.append(copy_rule("layers.{layer}.self_attn.out_proj.bias", "layers.attn.out.b", *L))
    for hf, ours in (("self_attn_layer_norm", "attn_norm"), ("final_layer_norm", "mlp_norm")):
        rules.append(copy_rule(f"layers.{{layer}}.{hf}.weight", f"layers.{ours}.w", *L))
        rules.append(copy_rule(f"layers.{{layer}}.{hf}.bias", f"layers.{ours}.b", *L))
    for fc in ("fc1", "fc2"):
        rules.append(linear_rule(f"layers.{{layer}}.{fc}.weight", f"layers.{fc}.w", *L))
        rules.append(copy_rule(f"layers.{{layer}}.{fc}.bias", f"layers.{fc}.b", *L))
    rules.append(copy_rule("ln_post.weight", "ln_post.w"))
    rules.append(copy_rule("ln_post.bias", "ln_post.b"))
    for proj in ("proj1", "proj2"):
        rules.append(linear_rule(f"{proj}.weight", f"{proj}.w"))
        rules.append(copy_rule(f"{proj}.bias", f"{proj}.b"))
    return rules
