"""Load a checkpoint directory (Hugging Face safetensors, or converted Orbax) into an OmniModel."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from omni_jax.config import OmniConfig
from omni_jax.weights.mapping import NameTable
from omni_jax.weights.orbax_io import DTYPES, MANIFEST, read_manifest, read_params
from omni_jax.weights.safetensors_io import CheckpointError, SafetensorsCheckpoint, is_hf_checkpoint


@functools.lru_cache(maxsize=16)
def name_table(cfg: OmniConfig, dtype=jnp.float32) -> NameTable:
    """The model's HF name table (built once per config: tracing the abstract model takes about a second)."""
    from omni_jax.models.omni import abstract_model, hf_rules, param_shapes

    return NameTable(hf_rules(cfg), param_shapes(abstract_model(cfg, dtype)))


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="tensor", file=sys.stderr, leave=False, dynamic_ncols=True)
    return bar, bar.update


def load_flat_params(directory: str | Path, cfg: OmniConfig, dtype_name: str = "float32",
                     progress: bool = False) -> dict[str, np.ndarray]:
    """Flat {param path: numpy array} from a HF or converted checkpoint, every name and shape validated."""
    directory = Path(directory)
    dtype = DTYPES[dtype_name]
    table = name_table(cfg)
    if is_hf_checkpoint(directory):
        ck = SafetensorsCheckpoint(directory)
        from omni_jax.weights.mapping import fill_params

        bar, update = _progress_bar(len(table), f"loading {directory.name}", progress)
        try:
            return fill_params(table, ck.read, ck.names(), dtype, source=str(directory), progress=update)
        finally:
            if bar is not None:
                bar.close()
    if (directory / MANIFEST).is_file():
        n_units = sum(len(g["units"]) for g in read_manifest(directory)["groups"])
        bar, update = _progress_bar(n_units, f"loading {directory.name}", progress)
        try:
            return read_params(directory, table.param_shapes, dtype, progress=update)
        finally:
            if bar is not None:
                bar.close()
    raise CheckpointError(f"{directory}: no model.safetensors, safetensors index or {MANIFEST} found")


def load_checkpoint(directory: str | Path, dtype: str = "float32", progress: bool = False, shardings=None,
                    mesh=None):
    """(OmniConfig, OmniModel) from a checkpoint directory (HF safetensors or converted by convert/hf_to_orbax.py).

    mesh: a ``jax.sharding.Mesh`` or a spec like ``"data=1,expert=8"``: the MoE expert stacks are split over its
    ``expert`` axis, the rest replicated. A converted directory is then restored unit by unit straight into each
    device's shard (``placement.py``: no full host copy); an HF directory is read on the host first.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    cfg = OmniConfig.from_file(directory)
    if mesh is not None:
        from omni_jax.sharding import make_mesh
        from omni_jax.weights.placement import param_shardings, read_params_to_devices

        mesh = make_mesh(mesh) if isinstance(mesh, str) else mesh
        table = name_table(cfg)
        shardings = param_shardings(table.param_shapes, mesh)
        if (directory / MANIFEST).is_file() and not is_hf_checkpoint(directory):
            n_units = sum(len(g["units"]) for g in read_manifest(directory)["groups"])
            bar, update = _progress_bar(n_units, f"loading {directory.name}", progress)
            try:
                flat = read_params_to_devices(directory, table.param_shapes, DTYPES[dtype], shardings, update)
            finally:
                if bar is not None:
                    bar.close()
            from omni_jax.models.omni import model_from_flat

            return cfg, model_from_flat(cfg, flat, jnp.dtype(dtype), shardings=shardings)
    flat = load_flat_params(directory, cfg, dtype, progress=progress)
    from omni_jax.models.omni import model_from_flat

    return cfg, model_from_flat(cfg, flat, jnp.dtype(dtype), shardings=shardings)
