"""One interface over the dispatch backends, chosen by platform and token count (overridable).

Every backend has the signature ``fn(x [T, H], weights [T, K], experts [T, K], valid [T, K],
gate_up [E, H, 2I], down [E, I, H]) -> y [T, H]`` and agrees with the dense oracle.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from omni_jax.errors import UsageError
from omni_jax.kernels.moe import moe_experts_usable
from omni_jax.moe.dense import dense_moe
from omni_jax.moe.gather import gather_moe
from omni_jax.moe.ragged import ragged_moe
from omni_jax.moe.tiles import tiles_moe
from omni_jax.quant.weights import merge_leading, take_leading

BACKENDS = {"dense": dense_moe, "gather": gather_moe, "tiles": tiles_moe, "ragged": ragged_moe}

# Up to this many tokens, reading the T·K selected experts whole beats sorting (decode, small batches).
GATHER_MAX_TOKENS = 2


class BackendError(UsageError):
    """Unknown dispatch backend name."""


def choose_backend(num_tokens: int, platform: str | None = None) -> str:
    platform = platform or jax.default_backend()
    if num_tokens <= GATHER_MAX_TOKENS:
        return "gather"
    return "tiles" if platform == "cpu" else "ragged"


def get_backend(name: str, num_tokens: int, *, tile: int | None = None):
    if name == "auto":
        name = choose_backend(num_tokens)
    if name not in BACKENDS:
        raise BackendError(f"unknown MoE backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
    fn = BACKENDS[name]
    if name == "tiles" and tile is not None:
        fn = functools.partial(tiles_moe, tile=tile)
    return fn


def _expert_stacks(gate_up, down, layer):
    """The stacks the gather backend reads: every layer's experts flattened to [L·E, ...] when ``layer`` is given."""
    if layer is None or not all(isinstance(a, jax.Array) for a in (gate_up, down)):
        return gate_up, down
    return merge_leading(gate_up), merge_leading(down)


def run_experts(x, weights, experts, valid, gate_up, down, *, backend: str = "auto", tile: int | None = None,
                layer=None):
    """The routed experts' weighted output y [T, H] for x [T, H] and the (weights, experts, valid) [T, K] slots.

    gate_up / down: one layer's stacks [E, ...], or (``layer`` given) every layer's [L, E, ...]: the gather
    backend then reads the chosen experts straight from the stacked weights (index ``layer * E + expert`` in
    the flattened stack) — slicing one layer out first makes XLA:CPU copy all of that layer's experts.

    ``auto`` on CPU with the CPU kernel usable (float32, plain weights) is ``gather`` at every token count: the
    kernel reads each used expert once, in place (real width, 128 experts: 63 vs 167 ms with ``tiles`` at 16
    tokens, 265 vs 513-595 ms at 512)."""
    if backend == "auto" and moe_experts_usable(x, *_expert_stacks(gate_up, down, layer)):
        backend = "gather"
    name = choose_backend(x.shape[0]) if backend == "auto" else backend
    fn = get_backend(name, x.shape[0], tile=tile)
    if layer is None:
        return fn(x, weights, experts, valid, gate_up, down)
    if name == "gather":
        offset = jnp.asarray(layer, jnp.int32) * gate_up.shape[1]
        return fn(x, weights, experts + offset, valid, merge_leading(gate_up), merge_leading(down))
    return fn(x, weights, experts, valid, take_leading(gate_up, layer), take_leading(down, layer))
