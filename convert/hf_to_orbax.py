"""Convert a Hugging Face Qwen3-Omni checkpoint (safetensors, single or sharded) to omni_jax's Orbax format.

    python convert/hf_to_orbax.py HF_DIR OUT_DIR [--dtype bfloat16|float32] [--report-memory]

Streams one tensor at a time into per-layer storage units (see omni_jax/weights/orbax_io.py), so peak
memory stays near the largest storage unit plus a group budget, whatever the checkpoint's size. Every
tensor name and shape is validated from the shard headers before anything is written. The output is
written to a temporary directory ``.OUT_DIR.tmp-PID-XXXX`` beside OUT_DIR and renamed at the end: an
interrupted or failed run (Ctrl-C, SIGTERM) leaves no OUT_DIR and removes its temporary; one killed outright
(SIGKILL) leaves its temporary, which the next run to the same OUT_DIR removes. An existing OUT_DIR is never
touched, and OUT_DIR's folder must exist. OUT_DIR also gets config.json and the tokenizer / preprocessor / generation files, so it is a
complete checkpoint directory for ``python -m omni_jax.generate --checkpoint OUT_DIR``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

from omni_jax.errors import OmniJaxError, UsageError, one_line


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UsageError (printed as one line, exit code 2, by main)."""

    def error(self, message):
        raise UsageError(message)


def parse_args(argv):
    p = ArgumentParser(prog="hf_to_orbax.py", description=__doc__.split("\n")[0])
    p.add_argument("hf_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--group-mb", type=int, default=256, help="Orbax group size budget in MiB (default 256)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-memory", action="store_true", help="print peak resident memory at the end")
    args = p.parse_args(argv)
    if args.group_mb < 1:
        raise UsageError(f"--group-mb {args.group_mb}: must be >= 1")
    return args


def convert(hf_dir: Path, out_dir: Path, dtype: str = "bfloat16", group_mb: int = 256, progress: bool = True) -> dict:
    from omni_jax.atomic import atomic_directory, check_output_parent
    from omni_jax.config import OmniConfig
    from omni_jax.processing.assets import copy_aux_files
    from omni_jax.weights.load import name_table
    from omni_jax.weights.orbax_io import MANIFEST, write_groups
    from omni_jax.weights.safetensors_io import CheckpointError, SafetensorsCheckpoint

    if not hf_dir.is_dir():
        raise CheckpointError(f"{hf_dir}: not a directory")
    if out_dir.exists():
        raise CheckpointError(f"{out_dir}: already exists (remove it or choose another output directory)")
    check_output_parent(out_dir, "output directory", directory=True)
    cfg = OmniConfig.from_file(hf_dir)
    table = name_table(cfg)
    ck = SafetensorsCheckpoint(hf_dir)  # parses and checks every shard header
    # Validate the whole name set and every shape from the headers, before writing anything.
    names = set(ck.names())
    missing = sorted(set(table.slots) - names)
    if missing:
        raise CheckpointError(f"{hf_dir}: missing tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = sorted(names - set(table.slots))
    if unexpected:
        raise CheckpointError(f"{hf_dir}: unexpected tensor {unexpected[0]!r} (no parameter slot; does config.json match?)")
    for name in table.slots:
        info = ck.tensors[name]
        if tuple(info.shape) != table.hf_shape(name):
            raise CheckpointError(f"{info.file}: tensor {name!r} has shape {tuple(info.shape)}, expected {table.hf_shape(name)}")

    bar = None
    try:
        with atomic_directory(out_dir) as tmp:  # also removes what a killed earlier run left beside out_dir
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(table), desc="converting", unit="tensor", file=sys.stderr, dynamic_ncols=True)
            manifest = write_groups(tmp, table, ck.read, dtype, group_bytes=group_mb << 20,
                                    progress=None if bar is None else bar.update)
            manifest["source"] = {"format": "huggingface-safetensors", "tensors": len(table),
                                  "bytes": ck.total_bytes()}
            shutil.copyfile(hf_dir / "config.json", tmp / "config.json")
            copy_aux_files(hf_dir, tmp)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    finally:
        if bar is not None:
            bar.close()
    return manifest


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv=None) -> int:
    t0 = time.time()
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        manifest = convert(args.hf_dir, args.out_dir, args.dtype, args.group_mb, progress=not args.no_progress)
    except OmniJaxError as e:
        print(f"hf_to_orbax: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("hf_to_orbax: interrupted; nothing was written", file=sys.stderr)
        return 130
    n = manifest["source"]["tensors"]
    print(f"wrote {args.out_dir} ({n} tensors, {len(manifest['groups'])} Orbax groups, {args.dtype}) "
          f"in {time.time() - t0:.1f} s")
    if args.report_memory:
        print(f"peak resident memory: {peak_rss_bytes() / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    from omni_jax.atomic import install_interrupt_handlers

    install_interrupt_handlers()  # SIGINT / SIGTERM: the temporary directory is removed, no OUT_DIR is left
    sys.exit(main())
