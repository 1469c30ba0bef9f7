"""Convert a Hugging Face Qwen3-Omni checkpoint (safetensors, single or sharded) to omni_jax's Orbax format.

    python convert/hf_to_orbax.py HF_DIR OUT_DIR [--dtype bfloat16|float32] [--report-memory]

The command line of ``omni_jax.weights.convert.convert_checkpoint``: streams one tensor at a time, validates
every name and shape first, and writes OUT_DIR atomically (a temporary directory beside it, renamed at the
end). Ctrl-C or SIGTERM leave no OUT_DIR and no temporary; after a SIGKILL the next run to the same OUT_DIR
removes the temporary left. An existing OUT_DIR is never touched; OUT_DIR's folder must exist. OUT_DIR is a
complete checkpoint directory for ``python -m omni_jax.generate --checkpoint OUT_DIR``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from omni_jax.errors import OmniJaxError, UsageError, one_line
from omni_jax.weights.convert import DTYPES
from omni_jax.weights.convert import convert_checkpoint as convert


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UsageError (printed as one line, exit code 2, by main)."""

    def error(self, message):
        raise UsageError(message)


def parse_args(argv):
    p = ArgumentParser(prog="hf_to_orbax.py", description=__doc__.split("\n")[0])
    p.add_argument("hf_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    p.add_argument("--group-mb", type=int, default=256, help="Orbax group size budget in MiB (default 256)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-memory", action="store_true", help="print peak resident memory at the end")
    args = p.parse_args(argv)
    if args.group_mb < 1:
        raise UsageError(f"--group-mb {args.group_mb}: must be >= 1")
    return args


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
