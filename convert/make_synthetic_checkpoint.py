"""Write a synthetic HF-layout Qwen3-Omni checkpoint: real tensor names and real widths, reduced depth,
random bf16 values, sharded safetensors written one tensor at a time.

    python convert/make_synthetic_checkpoint.py OUT_DIR [--layers 2] [--shard-gb 2] [--thinker-only]

Used to measure the converter's peak memory and for real-width benchmarks (real weights cannot be
downloaded here). Every stack (thinker, talker, code predictor, audio, vision, code2wav) gets ``--layers``
layers; the vision encoder keeps three deepstack mergers after its first blocks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ml_dtypes
import numpy as np


def reduced_config_dict(layers: int, thinker_only: bool = False) -> dict:
    from omni_jax.config import REAL_CONFIG_PATH

    d = json.loads(REAL_CONFIG_PATH.read_text())
    t = d["thinker_config"]
    t["text_config"]["num_hidden_layers"] = layers
    t["audio_config"]["encoder_layers"] = layers
    depth = max(layers, 3)
    t["vision_config"]["depth"] = depth
    t["vision_config"]["deepstack_visual_indexes"] = [0, 1, 2]
    d["talker_config"]["text_config"]["num_hidden_layers"] = layers
    d["talker_config"]["code_predictor_config"]["num_hidden_layers"] = layers
    d["talker_config"]["code_predictor_config"]["layer_types"] = ["full_attention"] * layers
    d["talker_config"]["accept_hidden_layer"] = min(d["talker_config"]["accept_hidden_layer"], layers)
    d["code2wav_config"]["num_hidden_layers"] = layers
    if thinker_only:
        d["enable_audio_output"] = False
        d.pop("talker_config")
        d.pop("code2wav_config")
    return d


def write_checkpoint(out_dir: Path, config: dict, seed: int = 0, shard_bytes: int = 2 << 30,
                     std: float = 0.02) -> int:
    from omni_jax.config import OmniConfig
    from omni_jax.processing.assets import copy_tokenizer_files
    from omni_jax.weights.load import name_table
    from omni_jax.weights.safetensors_io import write_sharded

    out_dir.mkdir(parents=True, exist_ok=False)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    cfg = OmniConfig.from_hf(config)
    table = name_table(cfg)
    tensors = [(n, table.hf_shape(n), np.dtype(ml_dtypes.bfloat16)) for n in sorted(table.names())]
    rng = np.random.default_rng(seed)

    def produce(name):
        shape = table.hf_shape(name)
        if name.endswith("norm.weight") or name.endswith("ln_q.weight") or name.endswith("ln_post.weight"):
            return np.ones(shape, ml_dtypes.bfloat16)
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(ml_dtypes.bfloat16)

    write_sharded(out_dir, tensors, produce, shard_bytes)
    copy_tokenizer_files(out_dir)
    return len(tensors)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--shard-gb", type=float, default=2.0)
    p.add_argument("--thinker-only", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.out_dir.exists():
        print(f"make_synthetic_checkpoint: error: {args.out_dir} already exists", file=sys.stderr)
        return 1
    n = write_checkpoint(args.out_dir, reduced_config_dict(args.layers, args.thinker_only), args.seed,
                         int(args.shard_gb * (1 << 30)))
    print(f"wrote {args.out_dir}: {n} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
