"""The whole model as one NNX tree, and the HF name table that maps every checkpoint tensor into it.

Tree (param path prefixes):          HF prefixes (the original on-disk layout):
  thinker.text.*                      thinker.model.{embed_tokens,layers,norm}.*, thinker.lm_head.*
  thinker.visual.*                    thinker.visual.*
  thinker.audio.*                     thinker.audio_tower.*
  talker.*  (when the checkpoint has a talker)   talker.{model,codec_head,text_projection,hidden_projection}.*
  talker.code_predictor.*             talker.code_predictor.*
  code2wav.*                          code2wav.*
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omni_jax.config import OmniConfig, ThinkerConfig
from omni_jax.models import audio_encoder, common, thinker_text, vision
from omni_jax.models.common import param_info
from omni_jax.weights.load import ModelTable, register_model_table
from omni_jax.weights.rules import Rule, prefixed


class Thinker(nnx.Module):
    def __init__(self, cfg: ThinkerConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.text = thinker_text.ThinkerText(cfg.text, rngs=rngs, dtype=dtype)
        self.visual = vision.VisionEncoder(cfg.vision, rngs=rngs, dtype=dtype)
        self.audio = audio_encoder.AudioEncoder(cfg.audio, rngs=rngs, dtype=dtype)


class OmniModel(nnx.Module):
    def __init__(self, cfg: OmniConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.thinker = Thinker(cfg.thinker, rngs=rngs, dtype=dtype)
        if cfg.has_talker:
            from omni_jax.models import code2wav, talker

            self.talker = talker.Talker(cfg.talker, rngs=rngs, dtype=dtype)
            self.code2wav = code2wav.Code2Wav(cfg.code2wav, rngs=rngs, dtype=dtype)


def hf_rules(cfg: OmniConfig) -> list[Rule]:
    rules = (
        prefixed(thinker_text.hf_rules(cfg.thinker.text), "thinker.", "thinker.text.")
        + prefixed(vision.hf_rules(cfg.thinker.vision), "thinker.visual.", "thinker.visual.")
        + prefixed(audio_encoder.hf_rules(cfg.thinker.audio), "thinker.audio_tower.", "thinker.audio.")
    )
    if cfg.has_talker:
        from omni_jax.models import code2wav, talker

        rules += prefixed(talker.hf_rules(cfg.talker), "talker.", "talker.")
        rules += prefixed(code2wav.hf_rules(cfg.code2wav), "code2wav.", "code2wav.")
    return rules


def with_decode_views(params: dict) -> dict:
    """``pure_params(OmniModel)`` with per-layer weight views (aliasing the stacks, no copy) of the Thinker's
    text decoder, the Talker, its code predictor and Code2Wav's transformer, for the generation programs on a
    single CPU device (elsewhere the params come back as they are). Same results; see
    ``decoder.with_layer_views``."""
    out = dict(params, thinker=dict(params["thinker"], text=thinker_text.with_decode_views(params["thinker"]["text"])))
    if "talker" in params:
        from omni_jax.models import code2wav, talker

        out["talker"] = talker.with_decode_views(params["talker"])
        out["code2wav"] = code2wav.with_layer_views(params["code2wav"])
    return out


def abstract_model(cfg: OmniConfig, dtype=jnp.float32) -> OmniModel:
    """The model with ShapeDtypeStructs for parameters: no memory allocated (real size is 35 B params).
    Traced once per (config, dtype): loading asks for it twice (name table, then the tree to fill); treat the
    result as read-only."""
    return _abstract_model(cfg, jnp.dtype(dtype))


@functools.lru_cache(maxsize=8)
def _abstract_model(cfg: OmniConfig, dtype) -> OmniModel:
    with common.shape_only_init():
        return nnx.eval_shape(lambda: OmniModel(cfg, rngs=nnx.Rngs(0), dtype=dtype))


def param_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    return {".".join(str(k) for k in path): tuple(v.get_value().shape)
            for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def param_count(model: nnx.Module) -> int:
    total = 0
    for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = v.get_value().shape
        n = 1
        for s in shape:
            n *= int(s)
        total += n
    return total


def model_from_flat(cfg: OmniConfig, flat: dict, dtype=jnp.float32) -> OmniModel:
    """Build an OmniModel whose parameters are the arrays in ``flat`` ({dotted path: array}); arrays already
    placed on devices (a mesh) stay where they are."""
    abstract = abstract_model(cfg, dtype)
    graphdef, state = nnx.split(abstract)
    flat_state = nnx.to_flat_state(state)
    leaves = []
    for path, var in flat_state:
        key = ".".join(str(k) for k in path)
        if key not in flat:
            raise KeyError(f"parameter {key} was not loaded")
        arr = flat[key]
        want = var.get_value().dtype
        if isinstance(arr, np.ndarray) and arr.dtype == want:
            # adopted in place when its data is aligned (weights.mapping.aligned_zeros): jnp.asarray would copy
            # it asynchronously, each copy holding its host array until done (both copies of the model at once)
            arr = jax.device_put(arr)
        elif not isinstance(arr, jax.Array):
            arr = jnp.asarray(arr, dtype=want)
        elif arr.dtype != want:
            arr = arr.astype(want)
        leaves.append((path, var.replace(arr)))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


@functools.lru_cache(maxsize=16)
def model_param_info(cfg: OmniConfig, dtype=jnp.float32) -> dict[str, tuple[tuple[int, ...], tuple]]:
    """{path: (shape, logical axes)} of every parameter of the model (abstract: nothing allocated; built once
    per config and dtype: tracing the abstract model takes about a second). Do not modify the result."""
    return param_info(abstract_model(cfg, dtype))


TABLE = ModelTable(hf_rules=hf_rules, param_info=model_param_info, build=model_from_flat)
register_model_table("OmniConfig", TABLE)
