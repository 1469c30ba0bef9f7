"""Peak host memory of loading a checkpoint: host path vs placing it straight onto a mesh.

    python -m omni_jax.bench load --checkpoint DIR [--converted CONVERTED_DIR] [--mesh expert=8] [--no-host]
                                  [--dtype bfloat16] [--json]

Each mode runs in a fresh subprocess (8 simulated CPU devices) so its peak RSS is its own. On a CPU "device"
the device buffers live in host RAM too, so the number that matters is the overhead: peak RSS minus the
bytes held on the devices minus the process's baseline (imports, XLA). The host path reads every parameter
into numpy first (a full host copy beside the device copy); the mesh path places every weight by its logical
axes and reads only the pieces each device holds: from an HF directory tensor by tensor (row blocks), from a
converted one Orbax unit by unit. Make a real-width reduced-depth checkpoint with
``python convert/make_synthetic_checkpoint.py HF_DIR --layers 1`` and ``python convert/hf_to_orbax.py HF_DIR OUT``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

WORKER = r"""
import json, os, resource, sys, time
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp
from omni_jax.weights import load_checkpoint
ckpt, dtype, mesh = sys.argv[1], sys.argv[2], sys.argv[3] or None
jnp.zeros(1).block_until_ready()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
cfg, model = load_checkpoint(ckpt, dtype=dtype, mesh=mesh)
from flax import nnx
leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
for a in leaves:
    a.block_until_ready()
secs = time.perf_counter() - t0
nbytes = sum(a.nbytes for a in leaves)
held = sum(s.data.nbytes for a in leaves for s in a.addressable_shards)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
from omni_jax.weights.load import is_converted
source = "converted" if is_converted(ckpt) else "hf"
mode = (mesh + " from " + source) if mesh else "host from " + source
print(json.dumps(dict(mode=mode, seconds=secs, param_bytes=nbytes, device_bytes=held, baseline_rss=base,
                      peak_rss=peak)))
"""


def measure(checkpoint: str, dtype: str, mesh: str | None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", WORKER, checkpoint, dtype, mesh or ""], capture_output=True, text=True,
                       env=env)
    if p.returncode != 0:
        raise RuntimeError(f"load worker failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m omni_jax.bench load", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="an HF (or converted) checkpoint directory")
    ap.add_argument("--converted", default=None, help="a converted copy of it: also placed onto the mesh")
    ap.add_argument("--mesh", default="expert=8",
                    help="mesh for the placement (simulated CPU devices share host RAM: every replica of a "
                         "parameter costs host memory here)")
    ap.add_argument("--no-host", action="store_true", help="skip the host path (it holds the model twice)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from omni_jax.bench.timing import emit_json, print_table

    rows = [] if args.no_host else [measure(args.checkpoint, args.dtype, None)]
    rows += [measure(d, args.dtype, args.mesh) for d in (args.checkpoint, args.converted) if d]
    gib = 1 << 30
    for r in rows:
        r["overhead_bytes"] = r["peak_rss"] - r["baseline_rss"] - r["device_bytes"]
    print_table(f"loading {args.checkpoint} ({args.dtype}, 8 simulated CPU devices)",
                ["mode", "params GiB", "held on devices GiB", "peak RSS GiB", "baseline GiB", "overhead GiB", "s"],
                [[r["mode"], r["param_bytes"] / gib, r["device_bytes"] / gib, r["peak_rss"] / gib,
                  r["baseline_rss"] / gib, r["overhead_bytes"] / gib, r["seconds"]] for r in rows])
    out = {"benchmark": "load", "checkpoint": args.checkpoint, "dtype": args.dtype, "rows": rows}
    if args.json:
        emit_json(out)
    return out


if __name__ == "__main__":
    main()
