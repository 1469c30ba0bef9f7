"""HF tensor name <-> parameter slot mapping, streaming safetensors reader, Orbax save/restore.

    from omni_jax.weights import load_checkpoint, name_table
    cfg, model = load_checkpoint("path/to/Qwen3-Omni", dtype="bfloat16")
"""

from omni_jax.weights.load import load_checkpoint, load_flat_params, name_table
from omni_jax.weights.mapping import NameTable, export_tensors, fill_params
from omni_jax.weights.rules import Rule
from omni_jax.weights.safetensors_io import CheckpointError, SafetensorsCheckpoint

__all__ = ["CheckpointError", "NameTable", "Rule", "SafetensorsCheckpoint", "export_tensors", "fill_params",
           "load_checkpoint", "load_flat_params", "name_table"]
