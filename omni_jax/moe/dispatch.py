"""One interface over the dispatch backends, chosen by platform and token count (overridable).

Every backend has the signature ``fn(x [T, H], weights [T, K], experts [T, K], valid [T, K],
gate_up [E, H, 2I], down [E, I, H]) -> y [T, H]`` and agrees with the dense oracle.
"""

from __future__ import annotations

import functools

import jax

from omni_jax.errors import UsageError
from omni_jax.moe.dense import dense_moe
from omni_jax.moe.gather import gather_moe
from omni_jax.moe.ragged import ragged_moe
from omni_jax.moe.tiles import tiles_moe

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
