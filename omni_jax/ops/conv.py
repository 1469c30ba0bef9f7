"""1-D convolutions as Code2Wav uses them, channels-last.

Layout: activations are ``[B, T, C]`` (channels last, like every other op here, so the transformer output feeds
the convs without a transpose and the pointwise parts are plain ``linear`` calls). Kernels are stored
``[k, C_in / groups, C_out]`` ("WIO"); the HF weight converters at the bottom turn PyTorch layouts into it.

- ``causal_conv1d``: HF ``CausalConvNet`` with stride 1: left-pad ``(k-1)*dilation`` zeros, no right pad.
- ``conv1d_valid``: the same conv without padding (a sequence continued after its last inputs).
- ``depthwise_causal_conv1d``: the same with ``groups = C`` (ConvNeXt's ``dwconv``).
- ``causal_trans_conv1d``: HF ``CausalTransConvNet``: a full ``ConvTranspose1d`` then trim ``k - s`` samples
  from **both** ends (so for ``k = 2s`` each output sample looks one input frame ahead). Output length
  ``(L - 1) * s + k - 2 (k - s) = (L + 1) s - k``. Where k is a multiple of s it runs as a polyphase conv
  (``polyphase_trans_conv1d``: no multiplications by the zeros between input frames).
"""

from __future__ import annotations

import einops
import jax
import numpy as np

_DIMS = ("NWC", "WIO", "NWC")


def causal_conv1d(x: jax.Array, w: jax.Array, b: jax.Array | None = None, dilation: int = 1,
                  groups: int = 1) -> jax.Array:
    """x [B, T, C_in], w [k, C_in/groups, C_out] -> [B, T, C_out]; output t sees inputs t-(k-1)d .. t."""
    return _conv1d(x, w, b, (w.shape[0] - 1) * dilation, dilation, groups)


def conv1d_valid(x: jax.Array, w: jax.Array, b: jax.Array | None = None, dilation: int = 1,
                 groups: int = 1) -> jax.Array:
    """The same conv without padding: [B, T - (k-1)*dilation, C_out]. ``causal_conv1d`` of a sequence's next
    inputs is this conv of them after its last ``(k-1)*dilation`` inputs (zeros at the start: the padding)."""
    return _conv1d(x, w, b, 0, dilation, groups)


def _conv1d(x, w, b, left_pad: int, dilation: int, groups: int) -> jax.Array:
    y = jax.lax.conv_general_dilated(
        x, w.astype(x.dtype), window_strides=(1,), padding=[(left_pad, 0)],
        rhs_dilation=(dilation,), dimension_numbers=_DIMS, feature_group_count=groups,
    )
    return y if b is None else y + b.astype(y.dtype)


def depthwise_causal_conv1d(x: jax.Array, w: jax.Array, b: jax.Array | None = None, dilation: int = 1) -> jax.Array:
    """Depthwise causal conv: x [B, T, C], w [k, 1, C]."""
    return causal_conv1d(x, w, b, dilation=dilation, groups=x.shape[-1])


def trans_conv1d_full(x: jax.Array, w: jax.Array, b: jax.Array | None, stride: int) -> jax.Array:
    """torch ConvTranspose1d (padding 0): x [B, L, C_in], w [k, C_in, C_out] -> [B, (L-1)*stride + k, C_out].

    out[t*s + j] += x[t] @ w[j]: a stride-1 conv over the input dilated by ``stride`` (zeros between frames),
    padded by k-1 on both sides, with the kernel flipped. Flipping the kernel costs a copy of it on every call;
    since the padding is symmetric, the same sums come from flipping the input and the output instead
    (``rev(conv(rev(x), w))``), which is cheaper when the activations are smaller than the kernel (Code2Wav's
    first decoder block: a 75 MB kernel, 3 MB of activations).
    """
    k = w.shape[0]
    out_len = (x.shape[1] - 1) * stride + k
    flip_activations = x.shape[1] * x.shape[2] + out_len * w.shape[2] < w.size

    def conv(lhs, rhs):
        return jax.lax.conv_general_dilated(lhs, rhs.astype(x.dtype), window_strides=(1,), padding=[(k - 1, k - 1)],
                                            lhs_dilation=(stride,), dimension_numbers=_DIMS)

    y = conv(x[:, ::-1], w)[:, ::-1] if flip_activations else conv(x, w[::-1])
    return y if b is None else y + b.astype(y.dtype)


def causal_trans_conv1d(x: jax.Array, w: jax.Array, b: jax.Array | None, stride: int,
                        polyphase_w: jax.Array | None = None) -> jax.Array:
    """HF CausalTransConvNet: full transposed conv, then drop ``k - stride`` samples at both ends.

    Where ``k`` is a multiple of the stride (every Code2Wav transposed conv: k = s or 2s) this runs as the
    polyphase conv of ``polyphase_trans_conv1d``, which skips the zeros a transposed conv inserts between the
    input frames: Code2Wav's decoder blocks at 25 frames, 22.8 / 19.7 / 23.7 / 32.6 ms -> 16.6 / 17.2 / 15.1 /
    13.1 ms (fp32, this 2-core CPU). ``polyphase_w`` is ``polyphase_weight(w, stride)`` made ahead of time;
    without it the weight is rearranged in the program when it is no larger than the activations (a 75 MB
    kernel's rearrangement costs more than the zeros: block 0 then keeps the dilated conv).
    """
    k = w.shape[0]
    trim = k - stride
    if trim < 0:
        raise ValueError(f"transposed conv with kernel {k} < stride {stride} is not supported")
    taps = k // stride
    if k % stride == 0 and x.shape[1] >= taps:
        if polyphase_w is None and w.size <= x.shape[1] * (x.shape[2] + stride * w.shape[2]):
            polyphase_w = polyphase_weight(w, stride)
        if polyphase_w is not None:
            return polyphase_trans_conv1d(x, polyphase_w, b, stride)
    y = trans_conv1d_full(x, w, b, stride)
    return y[:, trim: y.shape[1] - trim]


def polyphase_weight(w: jax.Array, stride: int) -> jax.Array:
    """A transposed conv's kernel [m * s, C_in, C_out] as the kernel of its polyphase conv [m, C_in, s * C_out]:
    tap ``t`` (reading input frame ``p + t`` for output frame ``p``) holds w[(m - 1 - t) * s + j] in output
    columns ``j * C_out ..``."""
    taps = w.shape[0] // stride
    return einops.rearrange(w, "(i j) c o -> i c (j o)", i=taps)[::-1]


def polyphase_trans_conv1d(x: jax.Array, polyphase_w: jax.Array, b: jax.Array | None, stride: int) -> jax.Array:
    """``causal_trans_conv1d`` for k = m * s from ``polyphase_weight(w, s)``: x [B, L, C_in] -> [B, (L+1) s - k, C_out].

    The full transposed conv's output frame q (samples q*s .. q*s + s - 1) is sum_i x[q - i] @ w[i*s .. i*s + s - 1];
    HF's trim of (m - 1) s samples at both ends keeps exactly the frames q = m-1 .. L-1, whose inputs all exist.
    So the output is an unpadded stride-1 conv of x with m taps and s * C_out channels, each frame's channels
    then laid out as its s samples."""
    y = jax.lax.conv_general_dilated(x, polyphase_w.astype(x.dtype), window_strides=(1,), padding=[(0, 0)],
                                     dimension_numbers=_DIMS)
    y = einops.rearrange(y, "b t (j o) -> b (t j) o", j=stride)
    return y if b is None else y + b.astype(y.dtype)


def trans_conv_out_len(length: int, kernel: int, stride: int) -> int:
    return (length - 1) * stride + kernel - 2 * (kernel - stride)


# ---- HF weight layouts <-> ours (numpy; used by the weight rules) ----

def conv_weight_from_hf(a: np.ndarray) -> np.ndarray:
    """torch Conv1d weight [C_out, C_in/groups, k] -> [k, C_in/groups, C_out]."""
    return np.ascontiguousarray(np.transpose(a, (2, 1, 0)))


def conv_weight_to_hf(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(a, (2, 1, 0)))


def trans_conv_weight_from_hf(a: np.ndarray) -> np.ndarray:
    """torch ConvTranspose1d weight [C_in, C_out, k] -> [k, C_in, C_out]."""
    return np.ascontiguousarray(np.transpose(a, (2, 0, 1)))


def trans_conv_weight_to_hf(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(a, (1, 2, 0)))
