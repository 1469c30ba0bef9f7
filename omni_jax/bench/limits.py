"""The machine's limits, measured in the same run as the benchmark: memory read bandwidth and matmul throughput."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from omni_jax.bench.timing import time_fn


@functools.lru_cache(maxsize=None)
def memory_read_bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes/s of a jitted full reduction over a ``nbytes`` fp32 array (a read-bound kernel)."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    f = jax.jit(lambda a: jnp.sum(a))
    t = time_fn(lambda: f(x), warmup=2, repeat=7)["min_s"]
    return nbytes / t


@functools.lru_cache(maxsize=None)
def matmul_flops(dtype_name: str = "float32", n: int = 2048) -> float:
    """FLOP/s of a jitted n×n×n matmul in ``dtype`` (fp32 accumulation)."""
    dtype = jnp.dtype(dtype_name)
    a = jnp.ones((n, n), dtype)
    b = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    t = time_fn(lambda: f(a, b), warmup=2, repeat=5)["min_s"]
    return 2 * n ** 3 / t
