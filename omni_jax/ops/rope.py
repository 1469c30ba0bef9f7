"""Rotary position embeddings: 1-D, interleaved multimodal (TM-RoPE / M-RoPE), and their application.

Layout is HF's half-split ("rotate_half") form, not interleaved pairs. Angles are computed in fp32;
text models cast cos/sin to the activation dtype before use (as HF does; bf16 in bf16 runs).
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def inv_freq(dim: int, theta: float) -> np.ndarray:
    """theta^(-arange(0, dim, 2)/dim) in float32 (computed as HF does: 1 / theta**(i/dim))."""
    exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return (1.0 / (np.float32(theta) ** exponent)).astype(np.float32)


def mrope_frequency_owner(head_dim: int, mrope_section: Sequence[int], interleaved: bool = True) -> np.ndarray:
    """For each of the head_dim/2 frequencies, which position row (0=t, 1=h, 2=w) drives it.

    Interleaved (Qwen3-Omni): j%3==1 below 3*sec[1] -> h, j%3==2 below 3*sec[2] -> w, else t.
    Contiguous (Qwen2-VL style): the first sec[0] are t, the next sec[1] h, the last sec[2] w.
    """
    half = head_dim // 2
    owner = np.zeros(half, dtype=np.int32)
    if interleaved:
        for row, offset in ((1, 1), (2, 2)):
            owner[offset: 3 * mrope_section[row]: 3] = row
    else:
        bounds = np.cumsum(mrope_section)
        owner[bounds[0]: bounds[1]] = 1
        owner[bounds[1]: bounds[2]] = 2
    return owner


def mrope_cos_sin(position_ids: jax.Array, head_dim: int, theta: float, mrope_section: Sequence[int],
                  interleaved: bool, dtype) -> tuple[jax.Array, jax.Array]:
    """position_ids [3, B, L] (float or int) -> cos, sin [B, L, head_dim] in ``dtype``."""
    inv = jnp.asarray(inv_freq(head_dim, theta))
    freqs = position_ids.astype(jnp.float32)[..., None] * inv  # [3, B, L, D/2]
    owner = jnp.asarray(mrope_frequency_owner(head_dim, mrope_section, interleaved))
    f = _select_rows(freqs, owner)
    emb = jnp.concatenate([f, f], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def _select_rows(freqs: jax.Array, owner: jax.Array) -> jax.Array:
    onehot = jax.nn.one_hot(owner, 3, dtype=jnp.bool_).T  # [3, D/2]
    return jnp.where(onehot[0], freqs[0], jnp.where(onehot[1], freqs[1], freqs[2]))


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float, dtype) -> tuple[jax.Array, jax.Array]:
    """1-D rope: positions [..., L] -> cos, sin [..., L, head_dim]."""
    inv = jnp.asarray(inv_freq(head_dim, theta))
    f = positions.astype(jnp.float32)[..., None] * inv
    emb = jnp.concatenate([f, f], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """HF's ``x * cos + rotate_half(x) * sin`` (cos/sin broadcast against x), the same products and sums written
    on the two halves of the last axis and stacked back. XLA:CPU fuses this into one loop; ``rotate_half``'s
    concatenate ran as copies of its own (512 tokens x 32 heads x 128: 8.7 -> 0.8 ms)."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    out = jnp.stack([x1 * cos[..., :d] - x2 * sin[..., :d], x2 * cos[..., d:] + x1 * sin[..., d:]], axis=-2)
    return out.reshape(*out.shape[:-2], 2 * d)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, L, H, D]; cos/sin [B, L, D] broadcast over heads."""
    return rotate(x, cos[..., None, :], sin[..., None, :])
