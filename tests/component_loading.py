"""Test helper: fill one NNX component from a tiny HF checkpoint through its own rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omni_jax.models.common import pure_params
from omni_jax.weights.mapping import NameTable, fill_params, flatten, unflatten
from omni_jax.weights.rules import prefixed
from omni_jax.weights.safetensors_io import SafetensorsCheckpoint


def load_component(ckpt_dir, make_module, rules, hf_prefix: str, dtype=jnp.float32):
    """make_module(rngs) -> module; rules relative to hf_prefix. Returns the module with loaded weights."""
    abstract = nnx.eval_shape(lambda: make_module(nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat_state = nnx.to_flat_state(state)
    shapes = {".".join(map(str, p)): tuple(v.get_value().shape) for p, v in flat_state}
    table = NameTable(prefixed(rules, hf_prefix, ""), shapes)
    ck = SafetensorsCheckpoint(ckpt_dir)
    flat = fill_params(table, ck.read, ck.names(), np.float32, strict=False)
    leaves = [(p, v.replace(jnp.asarray(flat[".".join(map(str, p))], dtype))) for p, v in flat_state]
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def param_shapes(module) -> dict:
    return {k: tuple(v.shape) for k, v in flatten(pure_params(module)).items()}


def load_from_hf(module: nnx.Module, rules, state_dict) -> None:
    """Fill ``module`` (abstract or not) from an in-memory HF state dict through the project's loader and ``rules``."""
    sd = {k: v.detach().float().numpy() for k, v in state_dict.items()}
    flat = fill_params(NameTable(rules, param_shapes(module)), sd.__getitem__, sd.keys(), np.float32,
                       source="HF module")
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, unflatten(flat)))
    nnx.update(module, state)
