"""Parameter constructors shared by the model modules, and the declared logical axes of a module tree.

Conventions (every module follows them, so weights, sharding and surgery work generically):
- Linear weights are [in, out]; stacked layers add a leading [num_layers] axis; experts add [num_experts]
  after it. Fused SwiGLU weights are ``gate_up`` [.., H, 2I] (gate = first I columns) and ``down`` [.., I, H].
- Every parameter is created with its logical axes (``axes=``: one name per dimension, from
  ``omni_jax.sharding.RULES``, or None), kept as the ``nnx.Param``'s ``out_sharding`` metadata (flax's
  name for it). Placement on a mesh, the expert-parallel specs, quantization and surgery read them back
  (``param_axes`` / ``param_info``); nothing finds a weight by its name.
- Parameters live in ``nnx.Param``; the maths reads ``nnx.to_pure_dict(nnx.state(module, nnx.Param))``,
  a plain nested dict of arrays with the same structure, and passes it to pure functions.
"""

from __future__ import annotations

import contextlib
import threading

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

AXES_KEY = "out_sharding"  # flax 0.12's metadata name for a Variable's (logical) sharding

_shape_only = threading.local()


@contextlib.contextmanager
def shape_only_init():
    """Within it, ``normal`` draws nothing (zeros of the same shape and dtype): for tracing an abstract model,
    where only shapes, dtypes and axes matter. Tracing ~100 random draws took about a second of every load."""
    before = getattr(_shape_only, "on", False)
    _shape_only.on = True
    try:
        yield
    finally:
        _shape_only.on = before


def param(value, axes: tuple) -> nnx.Param:
    """An ``nnx.Param`` carrying its logical axes (not placed on any mesh here: placement is the loader's)."""
    axes = tuple(axes)
    if len(axes) != len(value.shape):
        raise ValueError(f"{len(axes)} logical axes {axes} for a parameter of shape {tuple(value.shape)}")
    return nnx.Param(value, eager_sharding=False, **{AXES_KEY: axes})


def normal(rngs: nnx.Rngs, *shape: int, axes: tuple, dtype=jnp.float32, std: float = 0.02) -> nnx.Param:
    if getattr(_shape_only, "on", False):
        return param(jnp.zeros(shape, dtype), axes)
    return param(std * jax.random.normal(rngs.params(), shape, dtype), axes)


def ones(*shape: int, axes: tuple, dtype=jnp.float32) -> nnx.Param:
    return param(jnp.ones(shape, dtype), axes)


def zeros(*shape: int, axes: tuple, dtype=jnp.float32) -> nnx.Param:
    return param(jnp.zeros(shape, dtype), axes)


def full(value: float, *shape: int, axes: tuple, dtype=jnp.float32) -> nnx.Param:
    return param(jnp.full(shape, value, dtype), axes)


def bias_axis(out_axis: str | None) -> str | None:
    """A bias follows its weight's output axis, except over the model width (small: replicated)."""
    return "norm" if out_axis in ("embed", "channels", None) else out_axis


def pure_params(module: nnx.Module) -> dict:
    """The module's parameters as a plain nested dict of arrays (what the pure functions take)."""
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def _dotted(path) -> str:
    return ".".join(str(k) for k in path)


def param_info(module: nnx.Module) -> dict[str, tuple[tuple[int, ...], tuple]]:
    """{dotted path: (shape, logical axes)} of every parameter (works on abstract modules)."""
    out = {}
    for path, v in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        axes = v.get_metadata().get(AXES_KEY)
        if axes is None:
            raise ValueError(f"parameter {_dotted(path)} was created without logical axes")
        out[_dotted(path)] = (tuple(v.get_value().shape), tuple(axes))
    return out


def param_axes(module: nnx.Module) -> dict:
    """The declared logical axes as a nested dict mirroring ``pure_params(module)`` (tuples as leaves)."""
    tree: dict = {}
    for path, (_, axes) in param_info(module).items():
        node = tree
        *head, last = path.split(".")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = axes
    return tree


def stack_views(stacks: dict) -> tuple[dict, ...] | None:
    """Each layer of the stacked weights in ``stacks`` ([num_layers, ...] leaves) as its own array that *aliases*
    the stack's memory (no copy), or None where that is not possible.

    XLA:CPU copies a slice of a stacked weight before every dot that reads it (docs/performance.md); a weight
    that is its own argument is read in place. On a single CPU device a jax array is host memory: a numpy view
    of one layer, put back on the device, shares that memory. Only when every view is verified to alias (a
    single CPU device, aligned layer offsets) are the views returned, so this never duplicates a weight. Call
    it outside jit; the views are only valid while the stacks are alive and unmodified (never donate them).
    """
    leaves = jax.tree.leaves(stacks)
    if not leaves or not all(isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer) for a in leaves):
        return None
    devices = {d for a in leaves for d in a.devices()}
    if len(devices) != 1 or next(iter(devices)).platform != "cpu":
        return None
    device = next(iter(devices))
    host = jax.tree.map(np.asarray, stacks)
    views = []
    for i in range(leaves[0].shape[0]):
        layer = jax.tree.map(lambda h: jax.device_put(h[i], device), host)
        pairs = zip(jax.tree.leaves(layer), jax.tree.leaves(host))
        if not all(v.unsafe_buffer_pointer() == h[i].ctypes.data for v, h in pairs):
            return None
        views.append(layer)
    return tuple(views)
