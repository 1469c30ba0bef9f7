"""Quantize the MoE expert weights of a decoder stack (Thinker text, Talker) and count real storage.

Only ``layers.mlp.gate_up`` [L, E, H, 2I] and ``layers.mlp.down`` [L, E, I, H] are replaced by
``QuantizedWeight``; the router, the shared expert, attention, norms, embeddings, heads and the code
predictor stay as they are. The stacks are quantized one layer at a time (a jitted per-layer function), so
the fp32 intermediates stay at one layer's size on the real model (128 experts x 2048 x 1536 per layer).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.quant.weights import DEFAULT_GROUP, QuantizationError, QuantizedWeight, check_quantizable, quantize
from omni_jax.quant.weights import max_abs_error

EXPERT_KEYS = ("gate_up", "down")
STACKS = ("thinker", "talker")


def quantize_stack(w, bits: int, group: int = DEFAULT_GROUP, scale_dtype=jnp.float32) -> QuantizedWeight:
    """Quantize w [L, ...] one leading slice at a time (same result as ``quantize(w)``, less peak memory)."""
    if isinstance(w, QuantizedWeight):
        raise QuantizationError("expert weights are already quantized")
    check_quantizable(tuple(w.shape), bits, group)
    parts = [quantize(jnp.asarray(w[i]), bits, group, scale_dtype) for i in range(w.shape[0])]
    return jax.tree.map(lambda *a: jnp.stack(a), *parts)


def quantize_experts(text_params: dict, bits: int, group: int = DEFAULT_GROUP, scale_dtype=jnp.float32) -> dict:
    """A decoder's params (``{"layers": {"mlp": {"gate_up", "down", ...}, ...}, ...}``) with the expert
    weights quantized; every other entry is the same object as before."""
    mlp = text_params["layers"]["mlp"]
    new_mlp = dict(mlp)
    for k in EXPERT_KEYS:
        new_mlp[k] = quantize_stack(mlp[k], bits, group, scale_dtype)
    return dict(text_params, layers=dict(text_params["layers"], mlp=new_mlp))


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
    mlp = text_params["layers"]["mlp"]
    L, E, H, I = text_cfg.num_layers, text_cfg.num_experts, text_cfg.hidden_size, text_cfg.moe_intermediate_size
    want = {"gate_up": (L, E, H, 2 * I), "down": (L, E, I, H)}
    for k, shape in want.items():
        if tuple(mlp[k].shape) != shape:
            raise QuantizationError(f"{where}.layers.mlp.{k} has shape {tuple(mlp[k].shape)}, config says {shape}")


def _leaf_bytes(leaf) -> int:
    n = getattr(leaf, "nbytes", None)
    return int(n) if n is not None else int(np.asarray(leaf).nbytes)


def param_bytes(tree) -> int:
    """Bytes really stored by a param tree (a QuantizedWeight counts its integers and its scales)."""
    return sum(_leaf_bytes(x) for x in jax.tree.leaves(tree))


def expert_param_bytes(text_params: dict) -> int:
    """Bytes of a decoder's routed-expert weights (gate_up + down), quantized or not."""
    mlp = text_params["layers"]["mlp"]
    return sum(param_bytes(mlp[k]) for k in EXPERT_KEYS)


def expert_weight_error(float_params: dict, quant_params: dict) -> float:
    """max |dequantized - float| over every expert weight of a decoder (one layer at a time)."""
    err = 0.0
    for k in EXPERT_KEYS:
        w, qw = float_params["layers"]["mlp"][k], quant_params["layers"]["mlp"][k]
        for i in range(w.shape[0]):
            err = max(err, max_abs_error(w[i], qw[i]))
    return err
