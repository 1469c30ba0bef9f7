"""Every parameter declares its logical axes where it is created, and the rules table places the real model.

On the real config's abstract model (nothing allocated): every parameter has one known logical axis (or None)
per dimension; the expert stacks found by their axes are exactly the Thinker's and Talker's routed experts;
on meshes whose axes all shard weights, each device holds at most 1.05 x total / N + 0.15 GB of the bf16
model; a mesh axis is used at most once per array; a size that does not divide fails naming the weight.
"""

import math

import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, AxisType

from omni_jax.config import OmniConfig
from omni_jax.models.omni import model_param_info
from omni_jax.moe.layout import is_expert_stack
from omni_jax.sharding import RULES, ShardingError, logical_spec, mesh_sizes, per_device_bytes


@pytest.fixture(scope="module")
def real_info():
    return model_param_info(OmniConfig.real(), jnp.bfloat16)


def abstract_mesh(spec: str) -> AbstractMesh:
    sizes = mesh_sizes(spec)
    return AbstractMesh(tuple(sizes.values()), tuple(sizes), axis_types=(AxisType.Auto,) * len(sizes))


def test_every_parameter_has_axes_of_its_rank(real_info):
    assert len(real_info) > 250
    for path, (shape, axes) in real_info.items():
        assert len(axes) == len(shape), path
        assert all(a is None or a in RULES for a in axes), (path, axes)
    stacks = sorted(p for p, (_, axes) in real_info.items() if is_expert_stack(axes))
    assert stacks == ["talker.layers.mlp.down", "talker.layers.mlp.gate_up",
                      "thinker.text.layers.mlp.down", "thinker.text.layers.mlp.gate_up"]


@pytest.mark.parametrize("spec", ["expert=8", "fsdp=8", "fsdp=2,expert=4", "tensor=2,expert=4", "fsdp=8,expert=8",
                                  "expert=16", "fsdp=4,tensor=2,expert=8"])
def test_each_device_holds_about_one_nth(real_info, spec):
    mesh = abstract_mesh(spec)
    n = math.prod(mesh_sizes(spec).values())
    total = sum(math.prod(s) for s, _ in real_info.values()) * 2
    held = per_device_bytes(real_info, mesh, 2)
    assert held <= 1.05 * total / n + 0.15e9, (spec, held / 1e9, total / n / 1e9)
    for path, (shape, axes) in real_info.items():
        used = [a for e in logical_spec(axes, shape, mesh, name=path) if e is not None
                for a in ((e,) if isinstance(e, str) else e)]
        assert len(used) == len(set(used)), (path, used)


def test_data_axis_replicates_weights(real_info):
    shape, axes = real_info["thinker.text.layers.mlp.gate_up"]
    assert tuple(logical_spec(axes, shape, abstract_mesh("data=2,expert=4"))) == (None, "expert", None, None)


def test_a_size_that_does_not_divide_names_the_weight(real_info):
    shape, axes = real_info["thinker.text.layers.mlp.gate_up"]
    with pytest.raises(ShardingError, match=r"gate_up: dimension 1 \(experts, size 128 .*expert=3"):
        logical_spec(axes, shape, abstract_mesh("expert=3"), name="thinker.text.layers.mlp.gate_up")
