"""Quantize the MoE expert weights of a decoder stack (Thinker text, Talker) and count real storage.

The expert stacks are found by their declared logical axes (an ``experts`` axis before the two matrix
dimensions, ``omni_jax.moe.layout.is_expert_stack``): the routed ``gate_up`` [L, E, H, 2I] and ``down``
[L, E, I, H] become ``QuantizedWeight``; the router, the shared expert, attention, norms, embeddings, heads
and the code predictor stay as they are. ``axes`` (a dict mirroring the params, e.g. from
``omni_jax.models.common.param_axes``) defaults to the axes the decoder stack declares. The stacks are
quantized one layer at a time (a jitted per-layer function), so the fp32 intermediates stay at one layer's
size on the real model (128 experts x 2048 x 1536 per layer).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.moe.layout import expert_axis, is_expert_stack
from omni_jax.quant.weights import DEFAULT_GROUP, QuantizationError, QuantizedWeight, check_quantizable, quantize
from omni_jax.quant.weights import max_abs_error

STACKS = ("thinker", "talker")


def _declared_axes(text_params: dict, axes: dict | None) -> dict:
    if axes is not None:
        return axes
    from omni_jax.models.decoder import text_params_axes

    return text_params_axes(text_params)


def expert_stacks(text_params: dict, axes: dict | None = None) -> dict[tuple[str, ...], object]:
    """{key path: weight} of every expert stack in a decoder's params, found by its declared axes."""
    out = {}

    def walk(p, a, path):
        if isinstance(p, dict):
            for k, v in p.items():
                walk(v, a.get(k) if isinstance(a, dict) else None, path + (k,))
        elif isinstance(a, tuple) and is_expert_stack(a):
            out[path] = p

    walk(text_params, _declared_axes(text_params, axes), ())
    return out


def _replace(tree: dict, path: tuple[str, ...], value) -> dict:
    """A copy of the nested dict with one leaf replaced (every other entry is the same object)."""
    if len(path) == 1:
        return dict(tree, **{path[0]: value})
    return dict(tree, **{path[0]: _replace(tree[path[0]], path[1:], value)})


def quantize_stack(w, bits: int, group: int = DEFAULT_GROUP, scale_dtype=jnp.float32) -> QuantizedWeight:
    """Quantize w [L, ...] one leading slice at a time (same result as ``quantize(w)``, less peak memory)."""
    if isinstance(w, QuantizedWeight):
        raise QuantizationError("expert weights are already quantized")
    check_quantizable(tuple(w.shape), bits, group)
    parts = [quantize(jnp.asarray(w[i]), bits, group, scale_dtype) for i in range(w.shape[0])]
    return jax.tree.map(lambda *a: jnp.stack(a), *parts)


def quantize_experts(text_params: dict, bits: int, group: int = DEFAULT_GROUP, scale_dtype=jnp.float32,
                     axes: dict | None = None) -> dict:
    """A decoder's params (``{"layers": {"mlp": {"gate_up", "down", ...}, ...}, ...}``) with every expert stack
    quantized; every other entry is the same object as before."""
    out = text_params
    for path, w in expert_stacks(text_params, axes).items():
        out = _replace(out, path, quantize_stack(w, bits, group, scale_dtype))
    return out


def quantize_model_experts(params: dict, cfg, bits: int, group: int = DEFAULT_GROUP,
                           stacks: tuple[str, ...] = STACKS, scale_dtype=jnp.float32) -> dict:
    """Whole-model params (``{"thinker": {"text": ...}, "talker": ...}``) with the experts of the named
    decoder stacks quantized ("thinker" = thinker.text, "talker" = the Talker's decoder; a Talker absent
    from the params is skipped). cfg: the OmniConfig, used to check the expert shapes."""
    unknown = set(stacks) - set(STACKS)
    if unknown:
        raise QuantizationError(f"unknown stacks {sorted(unknown)}; choose from {STACKS}")
    out = dict(params)
    if "thinker" in stacks:
        _check_shapes(params["thinker"]["text"], cfg.thinker.text, "thinker.text")
        out["thinker"] = dict(params["thinker"], text=quantize_experts(params["thinker"]["text"], bits, group,
                                                                       scale_dtype))
    if "talker" in stacks and "talker" in params:
        _check_shapes(params["talker"], cfg.talker.text, "talker")
        out["talker"] = quantize_experts(params["talker"], bits, group, scale_dtype)
    return out


def _check_shapes(text_params: dict, text_cfg, where: str):
    L, E = text_cfg.num_layers, text_cfg.num_experts
    axes = _declared_axes(text_params, None)
    for path, w in expert_stacks(text_params).items():
        leaf_axes = axes
        for k in path:
            leaf_axes = leaf_axes[k]
        shape = tuple(w.shape)
        want = {"layers": L, "experts": E, "embed": text_cfg.hidden_size}
        if shape[expert_axis(leaf_axes)] != E or any(want.get(a, n) != n for a, n in zip(leaf_axes, shape)):
            raise QuantizationError(f"{where}.{'.'.join(path)} has shape {shape}, config says {L} layers of "
                                    f"{E} experts of width {text_cfg.hidden_size}")


def _leaf_bytes(leaf) -> int:
    n = getattr(leaf, "nbytes", None)
    return int(n) if n is not None else int(np.asarray(leaf).nbytes)


def param_bytes(tree) -> int:
    """Bytes really stored by a param tree (a QuantizedWeight counts its integers and its scales)."""
    return sum(_leaf_bytes(x) for x in jax.tree.leaves(tree))


def expert_param_bytes(text_params: dict, axes: dict | None = None) -> int:
    """Bytes of a decoder's routed-expert weights (gate_up + down), quantized or not."""
    return sum(param_bytes(w) for w in expert_stacks(text_params, axes).values())


def expert_weight_error(float_params: dict, quant_params: dict, axes: dict | None = None) -> float:
    """max |dequantized - float| over every expert weight of a decoder (one layer at a time)."""
    err = 0.0
    quantized = expert_stacks(quant_params, axes if axes is not None else _declared_axes(float_params, None))
    for path, w in expert_stacks(float_params, axes).items():
        qw = quantized[path]
        for i in range(w.shape[0]):
            err = max(err, max_abs_error(w[i], qw[i]))
    return err
