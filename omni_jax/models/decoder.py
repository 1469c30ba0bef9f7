"""The Qwen3-MoE decoder stack shared by the Thinker's text model and the Talker.

Layer (HF ``Qwen3OmniMoeThinkerTextDecoderLayer``): ``h = x + Attn(RMSNorm(x))``, ``x = h + MoE(RMSNorm(h))``
with GQA, q/k RMSNorm over head_dim, interleaved M-RoPE applied after the q/k norms, no biases.

Parameters of all layers are stacked on a leading layer axis and the stack runs as ``jax.lax.scan``. The
scan is split into segments (never unrolled) where something happens between layers: deepstack
injections after the first layers, a tapped hidden state (the Talker reads Thinker layer 24), or a change of
routing hooks from one layer to the next. Every segment scans over layer *indices* and reads its layer's
weights from the whole stacks inside the body: slicing a segment's stacks first (``a[start:end]``) makes
XLA copy every layer of the segment on each call, so a split stack cost memory and time in proportion to
its depth. Even one layer's slice is a copy on XLA:CPU (its dots cannot read a sub-range of a buffer), so
the decode engines pass per-layer views of the projection weights that alias the stacks
(``with_layer_views``) and the body reads them in place through a ``lax.switch`` over layers. The KV cache
is one array per k/v for all layers, ``[num_layers, B, S, Hkv, D]``, carried through the scan and updated in
place at (layer, slot).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from omni_jax import sharding
from omni_jax.config import TextConfig
from omni_jax.models.common import normal, ones, param_axes, shape_only_init, stack_views
from omni_jax.moe import RoutingConfig, moe_block
from omni_jax.moe.layout import moe_axes
from omni_jax.ops.attention import attention, causal_mask, stacked_cache_attention
from omni_jax.ops.linear import linear, linears
from omni_jax.ops.norms import rms_norm
from omni_jax.ops.rope import apply_rope, mrope_cos_sin
from omni_jax.weights.rules import Rule, copy_rule, linear_rule, transpose


class Attention(nnx.Module):
    def __init__(self, cfg: TextConfig, n: int, rngs: nnx.Rngs, dtype):
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = normal(rngs, n, h, cfg.num_heads * d, axes=("layers", "embed", "heads"), dtype=dtype)
        self.k_proj = normal(rngs, n, h, cfg.num_kv_heads * d, axes=("layers", "embed", "kv_heads"), dtype=dtype)
        self.v_proj = normal(rngs, n, h, cfg.num_kv_heads * d, axes=("layers", "embed", "kv_heads"), dtype=dtype)
        self.o_proj = normal(rngs, n, cfg.num_heads * d, h, axes=("layers", "heads", "embed"), dtype=dtype)
        self.q_norm = ones(n, d, axes=("layers", "norm"), dtype=dtype)
        self.k_norm = ones(n, d, axes=("layers", "norm"), dtype=dtype)


class MoEParams(nnx.Module):
    """The MoE block's parameters, stacked over layers, with the axes ``omni_jax.moe.layout`` declares."""

    def __init__(self, cfg: TextConfig, n: int, rngs: nnx.Rngs, dtype):
        h, e, i = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
        self.router = normal(rngs, n, h, e, axes=moe_axes("router", True), dtype=dtype)
        self.gate_up = normal(rngs, n, e, h, 2 * i, axes=moe_axes("gate_up", True), dtype=dtype)
        self.down = normal(rngs, n, e, i, h, axes=moe_axes("down", True), dtype=dtype)
        s = cfg.shared_expert_intermediate_size
        if s:
            self.shared_gate_up = normal(rngs, n, h, 2 * s, axes=moe_axes("shared_gate_up", True), dtype=dtype)
            self.shared_down = normal(rngs, n, s, h, axes=moe_axes("shared_down", True), dtype=dtype)
            self.shared_gate = normal(rngs, n, h, 1, axes=moe_axes("shared_gate", True), dtype=dtype)


class DecoderLayers(nnx.Module):
    """All decoder layers' parameters, stacked on a leading [num_layers] axis."""

    def __init__(self, cfg: TextConfig, rngs: nnx.Rngs, dtype=jnp.float32):
        n = cfg.num_layers
        self.input_norm = ones(n, cfg.hidden_size, axes=("layers", "norm"), dtype=dtype)
        self.post_norm = ones(n, cfg.hidden_size, axes=("layers", "norm"), dtype=dtype)
        self.attn = Attention(cfg, n, rngs, dtype)
        self.mlp = MoEParams(cfg, n, rngs, dtype)


@functools.lru_cache(maxsize=None)
def _declared_layer_axes() -> dict:
    """DecoderLayers' declared axes (they do not depend on sizes; built abstractly, shared expert included)."""
    cfg = TextConfig(shared_expert_intermediate_size=TextConfig().moe_intermediate_size)
    with shape_only_init():
        return param_axes(nnx.eval_shape(lambda: DecoderLayers(cfg, nnx.Rngs(0))))


def _mirror(params, axes):
    if isinstance(params, dict):
        return {k: _mirror(v, axes.get(k) if isinstance(axes, dict) else None) for k, v in params.items()}
    return axes if isinstance(axes, tuple) else None


def text_params_axes(text_params: dict) -> dict:
    """The declared logical axes mirroring a text model's params (``ThinkerText`` / ``Talker`` pure params):
    the decoder stack under ``layers`` gets ``DecoderLayers``' axes; other entries None."""
    return {k: _mirror(v, _declared_layer_axes() if k == "layers" else None) for k, v in text_params.items()}


def decoder_layer_rules(cfg: TextConfig, hf_prefix: str, param_prefix: str) -> list[Rule]:
    """HF names of one Qwen3-MoE decoder stack (original per-expert layout) -> stacked slots."""
    n, e = cfg.num_layers, cfg.num_experts
    L, LE = ("layer",), ("layer", "expert")
    hp, pp = hf_prefix + "layers.{layer}.", param_prefix
    rules = [
        copy_rule(hp + "input_layernorm.weight", pp + "input_norm", L, (n,)),
        copy_rule(hp + "post_attention_layernorm.weight", pp + "post_norm", L, (n,)),
        copy_rule(hp + "self_attn.q_norm.weight", pp + "attn.q_norm", L, (n,)),
        copy_rule(hp + "self_attn.k_norm.weight", pp + "attn.k_norm", L, (n,)),
        linear_rule(hp + "mlp.gate.weight", pp + "mlp.router", L, (n,)),
        linear_rule(hp + "mlp.experts.{expert}.gate_proj.weight", pp + "mlp.gate_up", LE, (n, e), part=(0, 2)),
        linear_rule(hp + "mlp.experts.{expert}.up_proj.weight", pp + "mlp.gate_up", LE, (n, e), part=(1, 2)),
        linear_rule(hp + "mlp.experts.{expert}.down_proj.weight", pp + "mlp.down", LE, (n, e)),
    ]
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        rules.append(linear_rule(hp + f"self_attn.{proj}.weight", pp + f"attn.{proj}", L, (n,)))
    if cfg.shared_expert_intermediate_size:
        rules += [
            linear_rule(hp + "mlp.shared_expert.gate_proj.weight", pp + "mlp.shared_gate_up", L, (n,), part=(0, 2)),
            linear_rule(hp + "mlp.shared_expert.up_proj.weight", pp + "mlp.shared_gate_up", L, (n,), part=(1, 2)),
            linear_rule(hp + "mlp.shared_expert.down_proj.weight", pp + "mlp.shared_down", L, (n,)),
            Rule(hp + "mlp.shared_expert_gate.weight", pp + "mlp.shared_gate", L, (n,), transpose, transpose),
        ]
    return rules


# --------------------------------------------------------------------------------------------- maths


@dataclass(frozen=True)
class StackOptions:
    """Static options of one run of the stack (hashable: safe as a jit static argument)."""

    routing: tuple[RoutingConfig, ...]  # one per layer
    backend: str = "auto"
    collect_hidden: bool = False  # return every layer's output (HF output_hidden_states)
    taps: tuple[int, ...] = ()  # layer outputs to return (e.g. the Talker's accept_hidden_layer - 1)
    router_outputs: bool = False  # stats carry router_logits / top_k_experts / top_k_weights per layer

    @classmethod
    def uniform(cls, cfg: TextConfig, routing: RoutingConfig | Sequence[RoutingConfig] | None = None, **kw):
        if routing is None:
            routing = RoutingConfig.from_text_config(cfg)
        if isinstance(routing, RoutingConfig):
            routing = (routing,) * cfg.num_layers
        routing = tuple(routing)
        if len(routing) != cfg.num_layers:
            raise ValueError(f"{len(routing)} routing configs for {cfg.num_layers} layers")
        return cls(routing=routing, **kw)


@jax.tree_util.register_dataclass
@dataclass
class KVCache:
    """k, v: [num_layers, B, S, Hkv, D]; valid: [B, S] (slot holds a real token); length: slots written."""

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    length: jax.Array  # int32 scalar

    @classmethod
    def create(cls, cfg: TextConfig, batch: int, size: int, dtype) -> "KVCache":
        """An empty cache, sharded on the context mesh (``jax.set_mesh``) when there is one: batch over data /
        fsdp and kv heads over tensor where they divide, created in place on the devices."""
        shape = (cfg.num_layers, batch, size, cfg.num_kv_heads, cfg.head_dim)
        return cls(sharding.zeros(shape, dtype, sharding.KV_CACHE_AXES),
                   sharding.zeros(shape, dtype, sharding.KV_CACHE_AXES),
                   sharding.zeros((batch, size), bool, ("batch", None)), sharding.zeros((), jnp.int32, ()))

    @property
    def size(self) -> int:
        return self.k.shape[2]


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
PER_LAYER = "per_layer"  # key of ``with_layer_views``'s per-layer projection weights in a layers dict


def with_layer_views(layers: dict) -> dict:
    """``layers`` plus, under ``PER_LAYER``, every layer's q/k/v/o projection weights as arrays of their own that
    alias the stacks' memory (``common.stack_views``: no copy; single-device CPU only, else ``layers`` as is).

    ``decoder_stack`` then reads layer i's projections through a ``lax.switch`` over those arrays instead of
    slicing the stacks, which XLA:CPU does with a copy of the layer's weights on every call (72 MB per Thinker
    layer per decode step). The switch has one small branch per layer (its 4 dots), so compilation grows a
    little with depth; the layer scan itself is unchanged. Build it once, outside jit, for the decode engines.
    """
    if PER_LAYER in layers:
        return layers
    views = stack_views({name: layers["attn"][name] for name in PROJECTIONS})
    return layers if views is None else dict(layers, **{PER_LAYER: views})


# A decode step's rows go through the CPU matmul kernel: q/k/v in one call (``linears``) and o. o from one row,
# q/k/v from two, and a single q/k/v row only while the three weights are small (the Talker's 10 MB: 1.04-1.10x
# per layer of a 4-layer stack against XLA's dots). The Thinker's 40 MB of q/k/v gained nothing through the
# kernel in stacks of 2-8 layers (per layer within +-5 % of XLA's dots, back-to-back runs in one process) and
# lost 13-25 % on a lone layer repeated with the same token (its weights warm in the L3, where XLA's one-row
# dots read faster); its o stays on the kernel: 1.04-1.08x at 8 layers.
PROJECTION_KERNEL_MIN_ROWS = 1
QKV_ONE_ROW_KERNEL_MAX_BYTES = 16 << 20


def _qkv(h, w):
    ws = (w["q_proj"], w["k_proj"], w["v_proj"])
    small = sum(a.size * a.dtype.itemsize for a in ws) <= QKV_ONE_ROW_KERNEL_MAX_BYTES
    return linears(h, ws, kernel_min_rows=PROJECTION_KERNEL_MIN_ROWS if small else 2)


def _project(h, a, layer_idx, views):
    """(q, k, v) projections of ``h`` with this layer's weights: from ``a`` (sliced out of the stacks), or, with
    ``views = (per-layer weights of the segment, first layer index)``, read in place through a switch."""
    if views is None:
        return _qkv(h, a)
    per_layer, start = views
    return jax.lax.switch(layer_idx - start, [functools.partial(_qkv, w=w) for w in per_layer], h)


def _o(o, w):
    return linear(o, w["o_proj"], kernel_min_rows=PROJECTION_KERNEL_MIN_ROWS)


def _out_project(o, a, layer_idx, views):
    if views is None:
        return _o(o, a)
    per_layer, start = views
    return jax.lax.switch(layer_idx - start, [functools.partial(_o, w=w) for w in per_layer], o)


def _layer(p, mlp, x, cos, sin, mask, cache, layer_idx, slot, cfg: TextConfig, routing: RoutingConfig, backend,
           token_mask, router_outputs=False, views=None):
    """One layer. ``p``: this layer's attention and norm params; ``mlp``: the MoE params of ALL layers
    (stacked), indexed by ``layer_idx`` inside ``moe_block`` so decode reads only the chosen experts;
    ``views``: per-layer projection weights (see ``with_layer_views``) or None."""
    b, l, _ = x.shape
    hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    a = p["attn"]
    h = rms_norm(x, p["input_norm"], cfg.rms_norm_eps)
    q, k, v = _project(h, a, layer_idx, views)
    q = rms_norm(q.reshape(b, l, hq, d), a["q_norm"], cfg.rms_norm_eps)
    k = rms_norm(k.reshape(b, l, hkv, d), a["k_norm"], cfg.rms_norm_eps)
    v = v.reshape(b, l, hkv, d)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cache is not None:
        ck, cv = cache
        ck = jax.lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), (layer_idx, 0, slot, 0, 0))
        cv = jax.lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), (layer_idx, 0, slot, 0, 0))
        cache = (ck, cv)
        o = stacked_cache_attention(q, ck, cv, layer_idx, mask)
    else:
        o = attention(q, k, v, mask, scale_in_float32=True)
    x = x + _out_project(o.reshape(b, l, hq * d), a, layer_idx, views)
    h = rms_norm(x, p["post_norm"], cfg.rms_norm_eps)
    y, stats = moe_block(h, mlp, routing, token_mask=token_mask, backend=backend, layer=layer_idx,
                         stacked=True, with_router_outputs=router_outputs)
    return x + y.astype(x.dtype), cache, stats


def layer_weights(stacks: dict, idx) -> dict:
    """Layer ``idx`` (traced) of every stacked weight in ``stacks`` ([num_layers, ...] leaves)."""
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, idx, 0, keepdims=False), stacks)


def _segments(opts: StackOptions, n_layers: int, n_inject: int) -> list[tuple[int, int]]:
    cuts = {0, n_layers}
    cuts.update(t + 1 for t in opts.taps)
    if n_inject:
        cuts.add(n_inject)
    for i in range(1, n_layers):
        if opts.routing[i] != opts.routing[i - 1]:
            cuts.add(i)
    cuts = sorted(c for c in cuts if 0 <= c <= n_layers)
    return list(zip(cuts[:-1], cuts[1:]))


def decoder_stack(layers: dict, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array, cfg: TextConfig,
                  opts: StackOptions, *, cache: KVCache | None = None, slot=0, token_mask=None,
                  inject: jax.Array | None = None):
    """Run all layers.

    x [B, L, H]; cos/sin [B, L, D]; mask [B, L, K] bool (K = L without cache, S with one).
    inject [n, B, L, H] (optional) is added to the output of layers 0..n-1 (deepstack).
    Returns (x, cache_kv or None, stats stacked [num_layers, ...], hidden dict).
    hidden: {"all": [num_layers, B, L, H]} when collect_hidden (each layer's output before injection),
    {"tap_<i>": [B, L, H]} for each tap.
    """
    n = cfg.num_layers
    n_inject = 0 if inject is None else inject.shape[0]
    kv = None if cache is None else (cache.k, cache.v)
    stats_parts, hidden_parts, taps = [], [], {}
    views = layers.get(PER_LAYER)
    attn_stacks = {k: v for k, v in layers.items() if k not in ("mlp", PER_LAYER)}
    if views is not None:  # the projections are read through the views: slice only the norms out of the stacks
        attn_stacks["attn"] = {k: v for k, v in attn_stacks["attn"].items() if k not in PROJECTIONS}
    for start, end in _segments(opts, n, n_inject):
        routing = opts.routing[start]
        seg_inject = inject[start:end] if (inject is not None and start < n_inject) else None

        # a tap is the layer's output before its deepstack injection (HF's hidden_states hook on the layer)
        keep_out = opts.collect_hidden or (seg_inject is not None and (end - 1) in opts.taps)

        seg_views = None if views is None else (views[start:end], start)

        def body(carry, xs, routing=routing, keep_out=keep_out, seg_views=seg_views):
            h, kv_c = carry
            idx, inj = xs
            p = layer_weights(attn_stacks, idx)
            h, kv_c, st = _layer(p, layers["mlp"], h, cos, sin, mask, kv_c, idx, slot, cfg, routing, opts.backend,
                                 token_mask, opts.router_outputs, seg_views)
            out = h if keep_out else None
            if inj is not None:
                h = h + inj.astype(h.dtype)
            return (h, kv_c), (st, out)

        xs = (jnp.arange(start, end, dtype=jnp.int32), seg_inject)
        (x, kv), (st, outs) = jax.lax.scan(body, (x, kv), xs)
        stats_parts.append(st)
        if opts.collect_hidden:
            hidden_parts.append(outs)
        if end - 1 in opts.taps:
            taps[f"tap_{end - 1}"] = x if seg_inject is None else outs[-1]
    stats = jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *stats_parts)
    hidden = dict(taps)
    if opts.collect_hidden:
        hidden["all"] = jnp.concatenate(hidden_parts, axis=0)
    return x, kv, stats, hidden


def text_cos_sin(position_ids: jax.Array, cfg: TextConfig, dtype):
    """position_ids [3, B, L] -> cos, sin [B, L, head_dim] in the activation dtype, as HF casts them."""
    return mrope_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta, cfg.mrope_section, cfg.mrope_interleaved, dtype)


def stack_mask(attention_mask: jax.Array, cache: KVCache | None, slot, q_len: int):
    """Boolean attention mask for a forward of q_len tokens written at cache slot ``slot``.

    attention_mask [B, q_len] (1 = real token). Without a cache: causal over the q_len tokens with key
    padding. With a cache: the cache's valid slots plus the new tokens, causal by slot index.
    Returns (mask [B, q_len, K], new_valid [B, S] or None).
    """
    b = attention_mask.shape[0]
    am = attention_mask.astype(bool)
    q_pos = jnp.broadcast_to(slot + jnp.arange(q_len)[None], (b, q_len))
    if cache is None:
        return causal_mask(q_pos, q_pos, am), None
    valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, am, slot, axis=1)
    k_pos = jnp.broadcast_to(jnp.arange(cache.size)[None], (b, cache.size))
    return causal_mask(q_pos, k_pos, valid), valid

