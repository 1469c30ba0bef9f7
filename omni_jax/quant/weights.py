"""Weight-only INT8 / INT4 quantization: symmetric absmax scales per group of input rows, round-to-nearest.

A weight ``w [..., in, out]`` (stored [in, out] like every linear weight here) is split into groups of
``group`` consecutive input rows; each (group, output column) gets one scale ``absmax / qmax`` (qmax = 127
for INT8, 7 for INT4, symmetric: -qmax..qmax) and each element the integer ``round(w / scale)``. The model
holds the integers and the scales (``QuantizedWeight``) and dequantizes a slice right before its matmul.

Storage: INT8 keeps one int8 per weight. INT4 packs two 4-bit values per uint8 byte along the input axis
(row 2k in the low nibble, row 2k+1 in the high nibble), so ``q`` is ``[..., in/2, out]`` and memory really
halves (``jnp.int4`` is not used: its storage on CPU/accelerators is not reliably 4 bits per element).

``QuantizedWeight`` is a pytree whose leaves ``q`` and ``scale`` share every leading axis (layers, experts)
with the float weight, so anything done to the leading axes of all leaves at once (``jax.tree.map`` with
an index, a slice, a reshape of the leading axes, ``lax.scan`` over them, sharding the expert axis) works
on it as on a plain array. Its logical shape is derived from ``q``, never stored.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.errors import UsageError

SUPPORTED_BITS = (4, 8)
DEFAULT_GROUP = 128


class QuantizationError(UsageError):
    """A weight that cannot be quantized as asked (bits, group size, shape)."""


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """q: int8 [..., in, out] (bits=8) or uint8 [..., in/2, out] (bits=4, two values per byte);
    scale: [..., in/group, out] (float); bits, group: static metadata."""

    q: jax.Array
    scale: jax.Array
    bits: int = dataclasses.field(metadata=dict(static=True))
    group: int = dataclasses.field(metadata=dict(static=True))

    @property
    def values_per_byte(self) -> int:
        return 8 // self.bits

    @property
    def shape(self) -> tuple[int, ...]:
        """The logical shape of the float weight this stands for."""
        s = tuple(self.q.shape)
        return s[:-2] + (s[-2] * self.values_per_byte, s[-1])

    @property
    def ndim(self) -> int:
        return len(self.q.shape)

    @property
    def nbytes(self) -> int:
        """Real storage: the integers plus the scales."""
        return int(self.q.nbytes) + int(self.scale.nbytes)

    def __getitem__(self, index):
        """Index / slice the LEADING axes (layers, experts) only, e.g. ``qw[3]`` or ``qw[:, 2:5]``."""
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > self.ndim - 2 or any(i is Ellipsis or i is None for i in index):
            raise QuantizationError("a QuantizedWeight can only be indexed on its leading (layer/expert) axes")
        return QuantizedWeight(self.q[index], self.scale[index], self.bits, self.group)

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        return dequantize(self, dtype)


jax.tree_util.register_dataclass(QuantizedWeight, data_fields=["q", "scale"], meta_fields=["bits", "group"])


def is_quantized(w) -> bool:
    return isinstance(w, QuantizedWeight)


def effective_group(in_dim: int, group: int = DEFAULT_GROUP) -> int:
    """min(group, in_dim): a small input dimension (tiny test models) is one group."""
    return min(group, in_dim)


def check_quantizable(shape: tuple[int, ...], bits: int, group: int) -> int:
    """The group size used for a weight of this shape; a clear error when it cannot be quantized."""
    if bits not in SUPPORTED_BITS:
        raise QuantizationError(f"unsupported bit width {bits}; choose from {SUPPORTED_BITS}")
    if group < 1:
        raise QuantizationError(f"group size must be positive, got {group}")
    if len(shape) < 2:
        raise QuantizationError(f"weight of shape {tuple(shape)}: need at least 2 dims [..., in, out]")
    n_in = shape[-2]
    g = effective_group(n_in, group)
    if n_in % g:
        raise QuantizationError(f"weight of shape {tuple(shape)}: input dim {n_in} is not divisible by the "
                                f"group size {g}")
    if bits == 4 and n_in % 2:
        raise QuantizationError(f"weight of shape {tuple(shape)}: INT4 packing needs an even input dim")
    return g


def pack_int4(q: jax.Array) -> jax.Array:
    """int8 [..., 2n, out] with values in [-8, 7] -> uint8 [..., n, out] (row 2k low nibble, 2k+1 high)."""
    lo = q[..., 0::2, :].astype(jnp.uint8) & 0xF
    hi = q[..., 1::2, :].astype(jnp.uint8) & 0xF
    return lo | (hi << 4)


def unpack_int4(packed: jax.Array) -> jax.Array:
    """uint8 [..., n, out] -> int8 [..., 2n, out] (sign-extended 4-bit values, exact inverse of pack_int4)."""
    b = packed.astype(jnp.int8)  # same bits; arithmetic shifts on int8 sign-extend
    lo = jnp.right_shift(jnp.left_shift(b, 4), 4)
    hi = jnp.right_shift(b, 4)
    *lead, n, out = packed.shape
    return jnp.stack([lo, hi], axis=-2).reshape(*lead, 2 * n, out)


def quantize(w, bits: int = 8, group: int = DEFAULT_GROUP, scale_dtype=jnp.float32) -> QuantizedWeight:
    """Symmetric absmax, round-to-nearest quantization of w [..., in, out] per (group of input rows, column).

    Per element |dequantize(q) - w| <= scale / 2 (fp32 scales; an all-zero group has scale 0 and is exact).
    Jitted (one compile per shape / bit width).
    """
    w = jnp.asarray(w)
    check_quantizable(tuple(w.shape), bits, group)
    return _quantize_jit(w, bits=bits, group=group, scale_dtype=jnp.dtype(scale_dtype))


@functools.partial(jax.jit, static_argnames=("bits", "group", "scale_dtype"))
def _quantize_jit(w, bits: int, group: int, scale_dtype) -> QuantizedWeight:
    g = effective_group(w.shape[-2], group)
    *lead, n_in, n_out = w.shape
    qmax = 2 ** (bits - 1) - 1
    wg = w.astype(jnp.float32).reshape(*lead, n_in // g, g, n_out)
    scale = (jnp.max(jnp.abs(wg), axis=-2) / qmax).astype(scale_dtype)
    s = scale.astype(jnp.float32)[..., None, :]
    q = jnp.clip(jnp.round(wg / jnp.where(s > 0, s, 1.0)), -qmax, qmax).astype(jnp.int8)
    q = q.reshape(*lead, n_in, n_out)
    if bits == 4:
        q = pack_int4(q)
    return QuantizedWeight(q, scale, bits, g)


def int_values(qw: QuantizedWeight) -> jax.Array:
    """The integer values, int8 [..., in, out] (INT4 unpacked)."""
    return unpack_int4(qw.q) if qw.bits == 4 else qw.q


def dequantize_array(qw: QuantizedWeight, dtype=jnp.float32) -> jax.Array:
    """The float weight [..., in, out] in ``dtype`` (computed in fp32, rounded once to dtype). Traceable:
    what the MoE backends call on one expert's slice inside their jitted code."""
    q = int_values(qw)
    *lead, n_in, n_out = q.shape
    g = qw.group
    w = q.reshape(*lead, n_in // g, g, n_out).astype(jnp.float32) * qw.scale.astype(jnp.float32)[..., None, :]
    return w.reshape(*lead, n_in, n_out).astype(dtype)


def dequantize(qw: QuantizedWeight, dtype=jnp.float32) -> jax.Array:
    """``dequantize_array`` jitted (for host-side use: tests, error measurements)."""
    return _dequantize_jit(qw, jnp.dtype(dtype))


_dequantize_jit = jax.jit(dequantize_array, static_argnums=(1,))


def as_float(w, dtype) -> jax.Array:
    """A plain array cast to dtype, or a QuantizedWeight dequantized to dtype (traceable)."""
    return dequantize_array(w, dtype) if isinstance(w, QuantizedWeight) else jnp.asarray(w).astype(dtype)


def take_leading(w, index, axis: int = 0):
    """``lax.dynamic_index_in_dim(w, index, axis, keepdims=False)`` on a plain array or a QuantizedWeight
    (axis must be a leading axis: it is applied to every leaf)."""
    idx = jnp.asarray(index, jnp.int32)
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, idx, axis, keepdims=False), w)


def merge_leading(w, n: int = 2):
    """Merge the first n leading axes into one (e.g. [L, E, in, out] -> [L·E, in, out]) on any weight."""
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[n:]), w)


def max_abs_error(w, qw: QuantizedWeight) -> float:
    """max |dequantize(qw) - w| over all elements (host float)."""
    return float(_max_abs_error(jnp.asarray(w), qw))


@jax.jit
def _max_abs_error(w, qw):
    return jnp.max(jnp.abs(dequantize_array(qw, jnp.float32) - w.astype(jnp.float32)))


def storage_bytes_per_weight(qw: QuantizedWeight) -> float:
    return qw.nbytes / float(np.prod(qw.shape))
