"""Every one of the real checkpoint's 28,010 tensor names maps to a parameter of the abstract real-size model
with a matching shape, none missing or unmapped; the parameter count is the real 35,259,818,545."""

import json
from pathlib import Path

import pytest

from omni_jax.config import OmniConfig
from omni_jax.models.omni import abstract_model, param_count, param_shapes
from omni_jax.weights.mapping import NameTable
from omni_jax.models.omni import hf_rules

SHARED = Path(__file__).resolve().parents[3] / "shared" / "qwen3_omni_meta" / "instruct" / "tensor_shapes.json"
LOCAL = Path(__file__).resolve().parent / "data" / "real_tensor_shapes.json"


def real_shapes() -> dict[str, tuple[int, ...]]:
    path = LOCAL if LOCAL.is_file() else SHARED
    d = json.loads(path.read_text())
    table = d.get("tensors", d)
    out = {}
    for name, v in table.items():
        if name == "metadata":
            continue
        shape = v["shape"] if isinstance(v, dict) else v
        out[name] = tuple(shape)
    return out


@pytest.fixture(scope="module")
def real():
    cfg = OmniConfig.real()
    model = abstract_model(cfg)
    return cfg, model


def test_parameter_count_of_the_abstract_real_model(real):
    _, model = real
    assert param_count(model) == 35_259_818_545


def test_all_28010_real_names_map_with_matching_shapes(real):
    cfg, model = real
    table = NameTable(hf_rules(cfg), param_shapes(model))
    shapes = real_shapes()
    assert len(shapes) == 28010
    assert set(table.names()) == set(shapes), (sorted(set(shapes) - set(table.names()))[:3],
                                               sorted(set(table.names()) - set(shapes))[:3])
    bad = [(n, table.hf_shape(n), s) for n, s in shapes.items() if table.hf_shape(n) != s]
    assert not bad, bad[:3]
