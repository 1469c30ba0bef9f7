"""Code predictor (the talker's multi-token predictor): the 15 residual codes of one frame.

Per frame, as HF's talker drives ``code_predictor.generate`` (``prepare_inputs_for_generation``):
  prefill [past_hidden, talker.codec_embedding(c0)] at positions 0, 1 -> lm_head[0] -> c1
  step g = 1..14: input codec_embedding[g-1](c_g) at position g+1 -> lm_head[g] -> c_{g+1}
with a fresh KV cache each frame. The talker's next input needs
  sum_{g=1..15} codec_embedding[g-1](c_g)          (plus its own codec_embedding(c0) and a text embedding)
which ``predict_codes`` returns as ``embed_sum``.

The whole frame is ONE jitted function: a 2-token prefill, then ``lax.scan`` over the 14 remaining steps with a
preallocated per-layer [B, 16, kv_heads, head_dim] cache. The 5 layers are unrolled over per-layer weight slices
taken once per frame (``split_layers``), or views aliasing the stacks (``with_layer_views``, what the Talker engine
uses on CPU): the steps read the weights in place instead of copying each layer out of the stack at every step.
Greedy (argmax, as ``do_sample=False``) or sampled with HF's warpers in HF's order (temperature, top-k, top-p;
the reference's defaults top_k 50, top_p 0.8, temperature 1.0) from an explicit PRNG key.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from omni_jax.config import CodePredictorConfig
from omni_jax.models.common import normal, ones, pure_params, shape_only_init, stack_views
from omni_jax.ops.attention import attention
from omni_jax.ops.linear import linear, swiglu_mlp
from omni_jax.ops.logits import warp
from omni_jax.ops.norms import rms_norm
from omni_jax.ops.rope import apply_rope, rope_cos_sin
from omni_jax.weights.rules import Rule, copy_rule, linear_rule

# every dot of a frame has one row per batch entry: the CPU matmul kernel reads its weights faster than XLA's GEMV
# (one real-width frame 209.5 -> 176.8 ms; kernels.matmul)
KERNEL_ROWS = 1

TOP_K, TOP_P, TEMPERATURE = 50, 0.8, 1.0


class CodePredictorLayers(nnx.Module):
    """Dense Qwen3 decoder layers stacked on a leading [num_layers] axis."""

    def __init__(self, cfg: CodePredictorConfig, rngs: nnx.Rngs, dtype=jnp.float32):
        n, h, i, d = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
        self.attn_norm = ones(n, h, axes=("layers", "norm"), dtype=dtype)
        self.q = normal(rngs, n, h, cfg.num_heads * d, axes=("layers", "embed", "heads"), dtype=dtype)
        self.k = normal(rngs, n, h, cfg.num_kv_heads * d, axes=("layers", "embed", "kv_heads"), dtype=dtype)
        self.v = normal(rngs, n, h, cfg.num_kv_heads * d, axes=("layers", "embed", "kv_heads"), dtype=dtype)
        self.o = normal(rngs, n, cfg.num_heads * d, h, axes=("layers", "heads", "embed"), dtype=dtype)
        self.q_norm = ones(n, d, axes=("layers", "norm"), dtype=dtype)
        self.k_norm = ones(n, d, axes=("layers", "norm"), dtype=dtype)
        self.mlp_norm = ones(n, h, axes=("layers", "norm"), dtype=dtype)
        self.gate_up = normal(rngs, n, h, 2 * i, axes=("layers", "embed", "mlp"), dtype=dtype)
        self.down = normal(rngs, n, i, h, axes=("layers", "mlp", "embed"), dtype=dtype)


class CodePredictor(nnx.Module):
    """Parameters of HF ``talker.code_predictor``; ``__call__`` predicts one frame's 15 residual codes."""

    def __init__(self, cfg: CodePredictorConfig, rngs: nnx.Rngs | None = None, dtype=jnp.float32):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.cfg = cfg
        g = cfg.num_code_groups - 1
        self.layers = CodePredictorLayers(cfg, rngs, dtype)
        self.norm = ones(cfg.hidden_size, axes=("norm",), dtype=dtype)
        # one table / head per residual codebook: the leading axis is a stack, like a layer axis
        self.codec_embedding = normal(rngs, g, cfg.vocab_size, cfg.hidden_size, axes=("layers", "vocab", "embed"),
                                      dtype=dtype, std=1.0)
        self.lm_head = normal(rngs, g, cfg.hidden_size, cfg.vocab_size, axes=("layers", "embed", "vocab"),
                              dtype=dtype)

    @classmethod
    def abstract(cls, cfg: CodePredictorConfig, dtype=jnp.float32) -> "CodePredictor":
        """Shapes only (no random init, nothing compiled): the starting point for loading a checkpoint."""
        with shape_only_init():
            return nnx.eval_shape(lambda: cls(cfg, nnx.Rngs(0), dtype))

    def __call__(self, past_hidden, c0_embed, key=None, sample: bool = False, top_k: int = TOP_K,
                 top_p: float = TOP_P, temperature: float = TEMPERATURE) -> dict:
        key = jax.random.key(0) if key is None else key
        return predict_codes_jit(pure_params(self), past_hidden, c0_embed, key, cfg=self.cfg, sample=sample,
                                 top_k=top_k, top_p=top_p, temperature=temperature)


# --------------------------------------------------------------------------------------------- pure maths

def init_cache(cfg: CodePredictorConfig, batch: int, dtype) -> list[tuple[jax.Array, jax.Array]]:
    """Empty K/V cache for one frame: per layer (k, v) [B, num_code_groups, kv_heads, head_dim] (positions 0..15)."""
    shape = (batch, cfg.num_code_groups, cfg.num_kv_heads, cfg.head_dim)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.num_layers)]


PER_LAYER = "per_layer"  # key of ``with_layer_views``'s per-layer weights in the params
PER_HEAD = "per_head"  # key of its per-code-group lm_head weights


def with_layer_views(params: dict) -> dict:
    """The params plus, under ``PER_LAYER``, each layer's weights, and under ``PER_HEAD`` each code group's
    ``lm_head``, as arrays of their own aliasing the stacks (``common.stack_views``: no copy; single-device CPU
    only, else the params as they are). ``predict_codes`` then reads them in place instead of slicing the
    stacks: the layers once per frame, ``lm_head[g]`` (8 MB at real width) at every one of the 14 steps."""
    if PER_LAYER in params:
        return params
    views = stack_views(params["layers"])
    heads = stack_views({"w": params["lm_head"]})
    if views is None or heads is None:
        return params
    return dict(params, **{PER_LAYER: views, PER_HEAD: tuple(h["w"] for h in heads)})


def group_logits(params: dict, h: jax.Array, g) -> jax.Array:
    """h [B, H] @ lm_head[g] in float32; g may be traced. With ``PER_HEAD`` views a switch over the groups reads
    the chosen head in place (XLA:CPU copies a slice of the stacked heads before its dot)."""
    if PER_HEAD not in params:
        return linear(h, params["lm_head"][g], kernel_min_rows=KERNEL_ROWS).astype(jnp.float32)
    heads = params[PER_HEAD]
    if isinstance(g, int):
        return linear(h, heads[g], kernel_min_rows=KERNEL_ROWS).astype(jnp.float32)
    branches = [lambda h, w=w: linear(h, w, kernel_min_rows=KERNEL_ROWS).astype(jnp.float32)
                for w in heads]
    return jax.lax.switch(g, branches, h)


def split_layers(params: dict, num_layers: int) -> list[dict]:
    """The layer weights as one tree per layer: the views of ``with_layer_views`` when present, else slices of
    the stacks.

    XLA:CPU copies a slice of a stacked weight before every dot that reads it. Taken once per frame, before
    the 15-step loop, the slices are loop-invariant buffers the steps read in place; indexing the stack
    inside the loop would copy every layer's weights at every step."""
    if PER_LAYER in params:
        return list(params[PER_LAYER])
    return [jax.tree.map(lambda a, i=i: a[i], params["layers"]) for i in range(num_layers)]


def _attention(x, p, k_cache, v_cache, start, cos, sin, cfg: CodePredictorConfig):
    """GQA attention with q/k RMSNorm (before rope) writing this call's keys/values at ``start`` of the cache."""
    b, s, _ = x.shape
    hq, hkv, d, eps = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rms_norm_eps
    q = linear(x, p["q"], kernel_min_rows=KERNEL_ROWS).reshape(b, s, hq, d)
    k = linear(x, p["k"], kernel_min_rows=KERNEL_ROWS).reshape(b, s, hkv, d)
    v = linear(x, p["v"], kernel_min_rows=KERNEL_ROWS).reshape(b, s, hkv, d)
    q = apply_rope(rms_norm(q, p["q_norm"], eps), cos, sin)
    k = apply_rope(rms_norm(k, p["k_norm"], eps), cos, sin)
    k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), start, axis=1)
    v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), start, axis=1)
    query_pos = start + jnp.arange(s)
    visible = jnp.arange(k_cache.shape[1])[None, :] <= query_pos[:, None]  # causal; unwritten slots are ahead
    out = attention(q, k_cache.astype(x.dtype), v_cache.astype(x.dtype), visible[None]).reshape(b, s, hq * d)
    return linear(out, p["o"], kernel_min_rows=KERNEL_ROWS), k_cache, v_cache


def forward(layers: list[dict], norm: jax.Array, x: jax.Array, cache: list, start, cfg: CodePredictorConfig):
    """x [B, S, H] at positions start..start+S-1 through ``layers`` (``split_layers``) and the final norm
    -> (hidden [B, S, H], updated cache)."""
    s = x.shape[1]
    cos, sin = rope_cos_sin((start + jnp.arange(s))[None], cfg.head_dim, cfg.rope_theta, x.dtype)
    eps = cfg.rms_norm_eps
    new_cache = []
    for p, (k_cache, v_cache) in zip(layers, cache):
        a, k_cache, v_cache = _attention(rms_norm(x, p["attn_norm"], eps), p, k_cache, v_cache, start, cos, sin, cfg)
        x = x + a
        x = x + swiglu_mlp(rms_norm(x, p["mlp_norm"], eps), p["gate_up"], p["down"],
                           kernel_min_rows=KERNEL_ROWS)
        new_cache.append((k_cache, v_cache))
    return rms_norm(x, norm, eps), new_cache


def filter_logits(logits: jax.Array, top_k: int, top_p: float, temperature: float) -> jax.Array:
    """HF's TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper (filtered entries -> -inf), fp32."""
    return warp(logits, temperature, top_k, top_p)


def choose(logits: jax.Array, key, sample: bool, top_k: int, top_p: float, temperature: float) -> jax.Array:
    if not sample:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits, top_k, top_p, temperature), axis=-1).astype(jnp.int32)


def predict_codes(params: dict, past_hidden: jax.Array, c0_embed: jax.Array, key, cfg: CodePredictorConfig,
                  sample: bool = False, top_k: int = TOP_K, top_p: float = TOP_P,
                  temperature: float = TEMPERATURE) -> dict:
    """One frame: past_hidden, c0_embed [B, H] -> codes [B, G-1] int32, embed_sum [B, H], logits [B, G-1, V] fp32.

    ``past_hidden`` is the talker's final-normed hidden state at its last position; ``c0_embed`` is the talker's
    ``codec_embedding`` of the layer-0 code. ``embed_sum`` = sum of the G-1 residual codes' embeddings.
    """
    dtype = params["norm"].dtype
    b = past_hidden.shape[0]
    n_steps = cfg.num_code_groups - 1
    keys = jax.random.split(key, n_steps)
    layers, norm, table = split_layers(params, cfg.num_layers), params["norm"], params["codec_embedding"]
    x = jnp.stack([past_hidden, c0_embed], axis=1).astype(dtype)
    h, cache = forward(layers, norm, x, init_cache(cfg, b, dtype), 0, cfg)
    logits = group_logits(params, h[:, -1], 0)
    code = choose(logits, keys[0], sample, top_k, top_p, temperature)

    def step(carry, g):  # feeds c_g (embedded with table g-1) at position g+1, predicts c_{g+1} with lm_head[g]
        cache, code, embed_sum = carry
        e = table[g - 1, code]  # [B, H]: B rows gathered, not the whole table g-1
        h, cache = forward(layers, norm, e[:, None], cache, g + 1, cfg)
        logits = group_logits(params, h[:, 0], g)
        new_code = choose(logits, keys[g], sample, top_k, top_p, temperature)
        return (cache, new_code, embed_sum + e.astype(jnp.float32)), (new_code, logits)

    embed_sum = jnp.zeros((b, cfg.hidden_size), jnp.float32)
    (_, last, embed_sum), (codes, step_logits) = jax.lax.scan(step, (cache, code, embed_sum),
                                                              jnp.arange(1, n_steps))
    embed_sum = embed_sum + table[n_steps - 1, last].astype(jnp.float32)
    codes = jnp.concatenate([code[:, None], codes.T], axis=1)
    logits = jnp.concatenate([logits[:, None], jnp.swapaxes(step_logits, 0, 1)], axis=1)
    return {"codes": codes, "embed_sum": embed_sum.astype(dtype), "logits": logits}


predict_codes_jit = jax.jit(predict_codes, static_argnames=("cfg", "sample", "top_k", "top_p", "temperature"))


# --------------------------------------------------------------------------------------------- HF names

def hf_rules(cfg: CodePredictorConfig) -> list[Rule]:
    """HF names relative to ``talker.code_predictor.`` <-> parameter paths relative to ``CodePredictor``."""
    n, g = (cfg.num_layers,), (cfg.num_code_groups - 1,)
    lay = "model.layers.{layer}."
    rules = [
        copy_rule("model.norm.weight", "norm"),
        copy_rule("model.codec_embedding.{j}.weight", "codec_embedding", ("j",), g),
        linear_rule("lm_head.{j}.weight", "lm_head", ("j",), g),
        copy_rule(lay + "input_layernorm.weight", "layers.attn_norm", ("layer",), n),
        copy_rule(lay + "post_attention_layernorm.weight", "layers.mlp_norm", ("layer",), n),
        copy_rule(lay + "self_attn.q_norm.weight", "layers.q_norm", ("layer",), n),
        copy_rule(lay + "self_attn.k_norm.weight", "layers.k_norm", ("layer",), n),
        linear_rule(lay + "mlp.gate_proj.weight", "layers.gate_up", ("layer",), n, part=(0, 2)),
        linear_rule(lay + "mlp.up_proj.weight", "layers.gate_up", ("layer",), n, part=(1, 2)),
        linear_rule(lay + "mlp.down_proj.weight", "layers.down", ("layer",), n),
    ]
    for proj in "qkvo":
        rules.append(linear_rule(lay + f"self_attn.{proj}_proj.weight", f"layers.{proj}", ("layer",), n))
    return rules
