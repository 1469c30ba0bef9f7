"""Load a checkpoint directory (Hugging Face safetensors, or converted Orbax) into a model.

The loader knows nothing of the model's modules: a model family hands it a ``ModelTable`` (its HF name
rules, its parameters' shapes and logical axes, and how to build the module tree from flat arrays).
``omni_jax.models.omni`` registers the Qwen3-Omni table when it is imported; ``TABLE_MODULES`` says which
module defines the table of a config class, so that ``load_checkpoint(DIR)`` works on its own (the module is
imported on first use, as transformers' auto classes do), and ``table=`` passes one in explicitly.
"""

from __future__ import annotations

import functools
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from omni_jax.config import OmniConfig
from omni_jax.weights.mapping import NameTable
from omni_jax.weights.orbax_io import DTYPES, MANIFEST, read_manifest, read_params
from omni_jax.weights.safetensors_io import CheckpointError, SafetensorsCheckpoint, is_hf_checkpoint


@dataclass(frozen=True)
class ModelTable:
    """What the loader needs from a model family."""

    hf_rules: Callable[[Any], list]  # cfg -> [Rule]
    param_info: Callable[[Any, Any], dict]  # (cfg, dtype) -> {path: (shape, logical axes)}
    build: Callable[..., Any]  # (cfg, flat {path: array}, dtype) -> the model


_TABLES: dict[str, ModelTable] = {}
TABLE_MODULES = {"OmniConfig": "omni_jax.models.omni"}  # config class -> module that registers its table


def register_model_table(config_class: str, table: ModelTable) -> None:
    _TABLES[config_class] = table


def table_for(cfg) -> ModelTable:
    key = type(cfg).__name__
    if key not in _TABLES and key in TABLE_MODULES:
        importlib.import_module(TABLE_MODULES[key])
    if key not in _TABLES:
        raise CheckpointError(f"no model table registered for {key}")
    return _TABLES[key]


@functools.lru_cache(maxsize=16)
def name_table(cfg: OmniConfig, dtype=jnp.float32, table: ModelTable | None = None) -> NameTable:
    """The model's HF name table (built once per config: tracing the abstract model takes about a second)."""
    table = table or table_for(cfg)
    info = table.param_info(cfg, dtype)
    return NameTable(table.hf_rules(cfg), {p: shape for p, (shape, _) in info.items()})


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="tensor", file=sys.stderr, leave=False, dynamic_ncols=True)
    return bar, bar.update


def _with_bar(total: int, desc: str, enabled: bool, fn):
    bar, update = _progress_bar(total, desc, enabled)
    try:
        return fn(update)
    finally:
        if bar is not None:
            bar.close()


def _units(directory: Path) -> int:
    return sum(len(g["units"]) for g in read_manifest(directory)["groups"])


def is_converted(directory: Path) -> bool:
    return (Path(directory) / MANIFEST).is_file() and not is_hf_checkpoint(directory)


def load_flat_params(directory: str | Path, cfg: OmniConfig, dtype_name: str = "float32",
                     progress: bool = False, table: ModelTable | None = None) -> dict[str, np.ndarray]:
    """Flat {param path: numpy array} from a HF or converted checkpoint, every name and shape validated."""
    directory = Path(directory)
    dtype = DTYPES[dtype_name]
    names = name_table(cfg, table=table)
    if is_hf_checkpoint(directory):
        ck = SafetensorsCheckpoint(directory)
        from omni_jax.weights.mapping import fill_params

        return _with_bar(len(names), f"loading {directory.name}", progress,
                         lambda update: fill_params(names, ck.read, ck.names(), dtype, source=str(directory),
                                                    progress=update))
    if (directory / MANIFEST).is_file():
        return _with_bar(_units(directory), f"loading {directory.name}", progress,
                         lambda update: read_params(directory, names.param_shapes, dtype, progress=update))
    raise CheckpointError(f"{directory}: no model.safetensors, safetensors index or {MANIFEST} found")


def load_checkpoint(directory: str | Path, dtype: str = "float32", progress: bool = False, mesh=None,
                    table: ModelTable | None = None):
    """(OmniConfig, model) from a checkpoint directory (HF safetensors or converted by convert/hf_to_orbax.py).

    mesh: a ``jax.sharding.Mesh`` or a spec such as ``"fsdp=2,expert=4"``. Every parameter is placed by its
    declared logical axes (``omni_jax.sharding.RULES``; a size that does not divide a dimension it shards
    fails here, before anything is read). Each process then reads only the pieces its own devices hold: a
    converted directory unit by unit, an HF directory tensor by tensor, row blocks only (``placement.py``):
    no full host copy of the model, nor of any parameter.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    cfg = OmniConfig.from_file(directory)
    table = table or table_for(cfg)
    if mesh is None:
        flat = load_flat_params(directory, cfg, dtype, progress=progress, table=table)
        return cfg, table.build(cfg, flat, jnp.dtype(dtype))
    from omni_jax.sharding import check_fits, flat_shardings, make_mesh
    from omni_jax.weights import placement

    info = table.param_info(cfg, jnp.dtype(dtype))
    if not hasattr(mesh, "devices"):
        check_fits(info, mesh)  # a size that does not divide is named before any device is asked for
    mesh = make_mesh(mesh)
    shardings = flat_shardings(info, mesh)  # ShardingError before any file is read
    names = name_table(cfg, table=table)
    if is_hf_checkpoint(directory):
        ck = SafetensorsCheckpoint(directory)
        flat = _with_bar(len(names), f"loading {directory.name}", progress,
                         lambda update: placement.read_hf_to_devices(ck, names, DTYPES[dtype], shardings,
                                                                     source=str(directory), progress=update))
    elif (directory / MANIFEST).is_file():
        flat = _with_bar(_units(directory), f"loading {directory.name}", progress,
                         lambda update: placement.read_params_to_devices(directory, names.param_shapes,
                                                                         DTYPES[dtype], shardings, update))
    else:
        raise CheckpointError(f"{directory}: no model.safetensors, safetensors index or {MANIFEST} found")
    return cfg, table.build(cfg, flat, jnp.dtype(dtype))
