"""The Thinker's vision encoder (ViT with deepstack), HF ``Qwen3OmniMoeVisionEncoder``.

Pipeline per call (``grids`` = static tuple of (t, h, w) in patches, one per image/video):
patch rows [N, 1536] -> linear patch embedding (the Conv3d with kernel = stride) -> + learned 2-D position
table resized bilinearly (align_corners=True) to each grid -> ``depth`` pre-LN blocks with 2-D rotary (fp32)
and attention restricted to each temporal slice of each item (as in HF) -> deepstack mergers after the
configured blocks (the scan over blocks is split at those indices) and the final merger.

Attention within frames: patch rows are grouped by frame length (static), so frames of equal size run as one
batched, unmasked attention; no N x N mask is ever built, and compute is that of the frames alone.

Parameters (``pure_params``), linear weights [in, out], blocks stacked on a leading [depth] axis, deepstack
mergers stacked on a leading [n_deepstack] axis:
```
patch_embed.{w [3*T*p*p, D], b}   pos_embed.table [num_pos, D]
blocks.{norm1,norm2}.{w,b} [L, D]  blocks.attn.qkv.{w [L, D, 3D], b}  blocks.attn.proj.{w [L, D, D], b}
blocks.mlp.fc1.{w [L, D, I], b}    blocks.mlp.fc2.{w [L, I, D], b}
merger.ln.{w,b} [D]                merger.fc1.{w [4D, 4D], b}  merger.fc2.{w [4D, out], b}
deepstack.ln.{w,b} [n, 4D]         deepstack.fc1.{w [n, 4D, 4D], b}  deepstack.fc2.{w [n, 4D, out], b}
```
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omni_jax.config import VisionConfig
from omni_jax.executables import program
from omni_jax.models.common import bias_axis, normal, ones, pure_params, zeros
from omni_jax.ops.activations import ACTIVATIONS, gelu
from omni_jax.ops.attention import attention
from omni_jax.ops.linear import linear
from omni_jax.ops.norms import layer_norm
from omni_jax.ops.rope import rotate
from omni_jax.weights.rules import Rule, copy_rule, linear_rule

LN_EPS = 1e-6
Grids = tuple[tuple[int, int, int], ...]


# ------------------------------------------------------------------------------------------ parameters
class _Linear(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, din: int, dout: int, axes: tuple, lead: tuple[int, ...] = (),
                 dtype=jnp.float32):
        lead_axes = ("layers",) * len(lead)
        self.w = normal(rngs, *lead, din, dout, axes=lead_axes + tuple(axes), dtype=dtype, std=din ** -0.5)
        self.b = zeros(*lead, dout, axes=lead_axes + (bias_axis(axes[1]),), dtype=dtype)


class _LayerNorm(nnx.Module):
    def __init__(self, d: int, lead: tuple[int, ...] = (), dtype=jnp.float32):
        lead_axes = ("layers",) * len(lead)
        self.w = ones(*lead, d, axes=lead_axes + ("norm",), dtype=dtype)
        self.b = zeros(*lead, d, axes=lead_axes + ("norm",), dtype=dtype)


class _Table(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, n: int, d: int, dtype=jnp.float32):
        self.table = normal(rngs, n, d, axes=("vocab", "embed"), dtype=dtype)


class _Node(nnx.Module):
    """A named group of sub-modules (gives the nested parameter dict its structure)."""

    def __init__(self, **children):
        for k, v in children.items():
            setattr(self, k, v)


class _Merger(nnx.Module):
    def __init__(self, rngs, cfg: VisionConfig, postshuffle: bool, lead=(), dtype=jnp.float32):
        wide = cfg.hidden_size * cfg.spatial_merge_size ** 2
        self.ln = _LayerNorm(wide if postshuffle else cfg.hidden_size, lead, dtype)
        self.fc1 = _Linear(rngs, wide, wide, ("embed", "mlp"), lead, dtype)
        self.fc2 = _Linear(rngs, wide, cfg.out_hidden_size, ("mlp", "embed"), lead, dtype)


class VisionEncoder(nnx.Module):
    """Qwen3-Omni ViT. Call with patch rows [N, 3*T*p*p] and static grids ((t, h, w), ...)."""

    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs, dtype=jnp.float32):
        if cfg.hidden_act not in ACTIVATIONS:
            raise ValueError(f"vision hidden_act {cfg.hidden_act!r} unsupported")
        self.cfg = cfg
        D, L, I = cfg.hidden_size, cfg.depth, cfg.intermediate_size
        patch_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2
        self.patch_embed = _Linear(rngs, patch_dim, D, (None, "embed"), dtype=dtype)
        self.pos_embed = _Table(rngs, cfg.num_position_embeddings, D, dtype)
        self.blocks = _Node(
            norm1=_LayerNorm(D, (L,), dtype), norm2=_LayerNorm(D, (L,), dtype),
            attn=_Node(qkv=_Linear(rngs, D, 3 * D, ("embed", "heads"), (L,), dtype),
                       proj=_Linear(rngs, D, D, ("heads", "embed"), (L,), dtype)),
            mlp=_Node(fc1=_Linear(rngs, D, I, ("embed", "mlp"), (L,), dtype),
                      fc2=_Linear(rngs, I, D, ("mlp", "embed"), (L,), dtype)),
        )
        self.merger = _Merger(rngs, cfg, postshuffle=False, dtype=dtype)
        self.deepstack = _Merger(rngs, cfg, postshuffle=True, lead=(len(cfg.deepstack_visual_indexes),), dtype=dtype)

    def __call__(self, pixel_values: jax.Array, grids: Sequence[Sequence[int]], dtype=None):
        grids = normalize_grids(grids)
        dtype = dtype or self.patch_embed.w.value.dtype
        return vision_forward(pure_params(self), pixel_values, grids, self.cfg, dtype=dtype)


def normalize_grids(grid_thw) -> Grids:
    """Any [n, 3] grid spec -> a hashable tuple of (t, h, w) ints (static under jit)."""
    return tuple(tuple(int(v) for v in g) for g in np.asarray(grid_thw).reshape(-1, 3))


# ------------------------------------------------------------------------------------------ host-side tables
def patch_rows_cols(grids: Grids, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) in patches of every patch row, in the processor's merge-block order, per frame."""
    rows, cols = [], []
    for t, h, w in grids:
        r = np.arange(h).reshape(h // merge, merge, 1, 1)
        c = np.arange(w).reshape(1, 1, w // merge, merge)
        rr = np.broadcast_to(r, (h // merge, merge, w // merge, merge)).transpose(0, 2, 1, 3).reshape(-1)
        cc = np.broadcast_to(c, (h // merge, merge, w // merge, merge)).transpose(0, 2, 1, 3).reshape(-1)
        rows.append(np.tile(rr, t))
        cols.append(np.tile(cc, t))
    return np.concatenate(rows), np.concatenate(cols)


def _axis_taps(index: np.ndarray, size: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear align_corners=True taps/weights on one axis, in float32 as the reference computes them."""
    src = index.astype(np.float32) * np.float32(side - 1) / np.maximum(size - 1, 1).astype(np.float32)
    floor = np.floor(src)
    offsets = np.arange(2)
    taps = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
    weights = np.clip(np.float32(1) - np.abs(src[:, None] - floor[:, None] - offsets.astype(np.float32)), 0, None)
    return taps, weights.astype(np.float32)


def pos_embed_taps(grids: Grids, merge: int, num_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """Per patch, 4 rows of the square position table and their bilinear weights: ([N, 4] int, [N, 4] f32)."""
    side = int(num_positions ** 0.5)
    rows, cols = patch_rows_cols(grids, merge)
    heights = np.concatenate([np.full(t * h * w, h) for t, h, w in grids])
    widths = np.concatenate([np.full(t * h * w, w) for t, h, w in grids])
    ht, hw_ = _axis_taps(rows, heights, side)
    wt, ww = _axis_taps(cols, widths, side)
    idx = (ht[:, :, None] * side + wt[:, None, :]).reshape(-1, 4)
    wts = (hw_[:, :, None] * ww[:, None, :]).reshape(-1, 4)
    return idx.astype(np.int32), wts.astype(np.float32)


def frame_segments(grids: Grids) -> list[tuple[int, int]]:
    """(start, length) of every attention segment: one per temporal slice of each image/video."""
    segs, start = [], 0
    for t, h, w in grids:
        for _ in range(t):
            segs.append((start, h * w))
            start += h * w
    return segs


def _segment_groups(grids: Grids, full_attention: bool) -> list[np.ndarray]:
    """Index arrays [k, len] of same-length segments (static); one group of everything if full_attention."""
    segs = [(0, sum(t * h * w for t, h, w in grids))] if full_attention else frame_segments(grids)
    by_len: dict[int, list[int]] = {}
    for start, n in segs:
        by_len.setdefault(n, []).append(start)
    return [np.asarray(starts)[:, None] + np.arange(n)[None] for n, starts in sorted(by_len.items())]


def rope_cos_sin_2d(grids: Grids, merge: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """Axial 2-D rotary, fp32: angles [row*inv, col*inv, row*inv, col*inv] with inv over head_dim/4 pairs."""
    spatial = head_dim // 2
    inv = 1.0 / (np.float32(theta) ** (np.arange(0, spatial, 2, dtype=np.float32) / np.float32(spatial)))
    rows, cols = patch_rows_cols(grids, merge)
    fr = jnp.asarray(rows, jnp.float32)[:, None] * jnp.asarray(inv.astype(np.float32))
    fc = jnp.asarray(cols, jnp.float32)[:, None] * jnp.asarray(inv.astype(np.float32))
    cos = jnp.concatenate([jnp.cos(fr), jnp.cos(fc)], -1)
    sin = jnp.concatenate([jnp.sin(fr), jnp.sin(fc)], -1)
    return jnp.concatenate([cos, cos], -1), jnp.concatenate([sin, sin], -1)


# ------------------------------------------------------------------------------------------ maths
def _attention(x, p, cos, sin, groups: list[np.ndarray], num_heads: int):
    N, D = x.shape
    hd = D // num_heads
    qkv = linear(x, p["qkv"]["w"], p["qkv"]["b"]).reshape(N, 3, num_heads, hd)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    c, s = cos[:, None, :], sin[:, None, :]
    qf, kf = q.astype(jnp.float32), k.astype(jnp.float32)
    q = rotate(qf, c, s).astype(x.dtype)
    k = rotate(kf, c, s).astype(x.dtype)
    out = jnp.zeros((N, num_heads, hd), x.dtype)
    for idx in groups:  # static: one batched attention per distinct frame length
        o = attention(q[idx], k[idx], v[idx])  # [frames, S, H, hd]
        out = out.at[idx.reshape(-1)].set(o.reshape(-1, num_heads, hd))
    return linear(out.reshape(N, D), p["proj"]["w"], p["proj"]["b"])


def _block(x, p, cos, sin, groups, cfg: VisionConfig):
    h = layer_norm(x, p["norm1"]["w"], p["norm1"]["b"], LN_EPS)
    x = x + _attention(h, p["attn"], cos, sin, groups, cfg.num_heads)
    h = layer_norm(x, p["norm2"]["w"], p["norm2"]["b"], LN_EPS)
    act = ACTIVATIONS[cfg.hidden_act]
    return x + linear(act(linear(h, p["mlp"]["fc1"]["w"], p["mlp"]["fc1"]["b"])), p["mlp"]["fc2"]["w"],
                      p["mlp"]["fc2"]["b"])


def _merge(x, p, cfg: VisionConfig, postshuffle: bool):
    wide = cfg.hidden_size * cfg.spatial_merge_size ** 2
    if postshuffle:
        h = layer_norm(x.reshape(-1, wide), p["ln"]["w"], p["ln"]["b"], LN_EPS)
    else:
        h = layer_norm(x, p["ln"]["w"], p["ln"]["b"], LN_EPS).reshape(-1, wide)
    return linear(gelu(linear(h, p["fc1"]["w"], p["fc1"]["b"])), p["fc2"]["w"], p["fc2"]["b"])


def _layer_slice(tree, lo: int, hi: int):
    return jax.tree.map(lambda a: a[lo:hi], tree)


def _layer_at(tree, j: int):
    return jax.tree.map(lambda a: a[j], tree)


@program(static_argnames=("grids", "cfg", "dtype", "full_attention"))
def vision_forward(params: dict, pixel_values: jax.Array, grids: Grids, cfg: VisionConfig, dtype=jnp.float32,
                   full_attention: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    """Patch rows [N, 3*T*p*p] -> (embeds [N/4, out_hidden], deepstack list of [N/4, out_hidden]).

    ``full_attention=True`` lets every patch attend to every other (wrong; for tests that must see it fail).
    """
    merge = cfg.spatial_merge_size
    n = sum(t * h * w for t, h, w in grids)
    if pixel_values.shape[0] != n:
        raise ValueError(f"pixel_values has {pixel_values.shape[0]} rows but the grids {grids} need {n}")
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    x = linear(pixel_values.astype(dtype), params["patch_embed"]["w"], params["patch_embed"]["b"])
    idx, wts = pos_embed_taps(grids, merge, cfg.num_position_embeddings)
    table = params["pos_embed"]["table"]
    pos = jnp.sum(table[jnp.asarray(idx)].astype(jnp.float32) * jnp.asarray(wts)[..., None], axis=1)
    x = x + pos.astype(x.dtype)
    cos, sin = rope_cos_sin_2d(grids, merge, cfg.head_dim, cfg.rope_theta)
    groups = _segment_groups(grids, full_attention)

    def body(h, layer_params):
        return _block(h, layer_params, cos, sin, groups, cfg), None

    # Split the scan at the deepstack layers (in layer order); merger j belongs to deepstack_visual_indexes[j].
    taps = sorted(set(i for i in cfg.deepstack_visual_indexes if i < cfg.depth))
    deepstack, lo = [], 0
    for layer in taps:
        x, _ = jax.lax.scan(body, x, _layer_slice(params["blocks"], lo, layer + 1))
        lo = layer + 1
        j = cfg.deepstack_visual_indexes.index(layer)
        deepstack.append(_merge(x, _layer_at(params["deepstack"], j), cfg, postshuffle=True))
    if lo < cfg.depth:
        x, _ = jax.lax.scan(body, x, _layer_slice(params["blocks"], lo, cfg.depth))
    return _merge(x, params["merger"], cfg, postshuffle=False), deepstack


# ------------------------------------------------------------------------------------------ HF names
def hf_rules(cfg: VisionConfig) -> list[Rule]:
    """HF tensor names relative to ``thinker.visual.`` <-> parameter paths relative to the VisionEncoder."""
    D = cfg.hidden_size
    kernel = (cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
    L, n_ds = (cfg.depth,), (len(cfg.deepstack_visual_indexes),)
    rules = [
        Rule("patch_embed.proj.weight", "patch_embed.w",
             to_param=lambda a: np.ascontiguousarray(a.reshape(a.shape[0], -1).T),
             to_hf=lambda a: np.ascontiguousarray(a.T.reshape(D, *kernel))),
        copy_rule("patch_embed.proj.bias", "patch_embed.b"),
        copy_rule("pos_embed.weight", "pos_embed.table"),
    ]
    lay = dict(index=("layer",), ranges=L)
    for hf, ours in (("norm1", "norm1"), ("norm2", "norm2")):
        rules += [copy_rule(f"blocks.{{layer}}.{hf}.weight", f"blocks.{ours}.w", **lay),
                  copy_rule(f"blocks.{{layer}}.{hf}.bias", f"blocks.{ours}.b", **lay)]
    for hf, ours in (("attn.qkv", "attn.qkv"), ("attn.proj", "attn.proj"), ("mlp.linear_fc1", "mlp.fc1"),
                     ("mlp.linear_fc2", "mlp.fc2")):
        rules += [linear_rule(f"blocks.{{layer}}.{hf}.weight", f"blocks.{ours}.w", **lay),
                  copy_rule(f"blocks.{{layer}}.{hf}.bias", f"blocks.{ours}.b", **lay)]
    for hf_prefix, ours, extra in (("merger", "merger", {}), ("merger_list.{j}", "deepstack",
                                                            dict(index=("j",), ranges=n_ds))):
        rules += [copy_rule(f"{hf_prefix}.ln_q.weight", f"{ours}.ln.w", **extra),
                  copy_rule(f"{hf_prefix}.ln_q.bias", f"{ours}.ln.b", **extra),
                  linear_rule(f"{hf_prefix}.mlp.0.weight", f"{ours}.fc1.w", **extra),
                  copy_rule(f"{hf_prefix}.mlp.0.bias", f"{ours}.fc1.b", **extra),
                  linear_rule(f"{hf_prefix}.mlp.2.weight", f"{ours}.fc2.w", **extra),
                  copy_rule(f"{hf_prefix}.mlp.2.bias", f"{ours}.fc2.b", **extra)]
    return rules
