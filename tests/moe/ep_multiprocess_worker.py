"""One of two processes (4 CPU devices each) running the expert-parallel layer over an 8-device mesh.

Usage: python ep_multiprocess_worker.py PROCESS_ID PORT. Prints one JSON line: the max error of the global
result against this process's own single-device oracle.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")


def main(pid: int, port: int):
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                               initialization_timeout=60)
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec as P

    from moe_testutil import random_moe_params, random_tokens
    from omni_jax.moe import RoutingConfig, moe_block
    from omni_jax.moe.parallel import moe_param_specs
    from omni_jax.sharding import make_mesh

    E, H, I, K, T = 16, 16, 12, 4, 16
    p = {k: np.asarray(v) for k, v in random_moe_params(0, E, H, I).items()}
    x = np.asarray(random_tokens(0, T, H))
    rc = RoutingConfig(E, K)
    local = jax.local_devices()[0]
    y_ref = np.asarray(jax.jit(lambda x, p: moe_block(x, p, rc, backend="dense")[0], device=local)(x, p))

    mesh = make_mesh("data=2,expert=4")
    specs = moe_param_specs(p, mesh)

    def global_array(a, spec):
        return jax.make_array_from_callback(a.shape, NamedSharding(mesh, spec), lambda idx: a[idx])

    pg = {k: global_array(v, specs[k]) for k, v in p.items()}
    result = {"pid": pid, "process_count": jax.process_count(), "devices": jax.device_count()}
    for path in ("psum", "all_to_all"):
        x_spec = P(("data", "expert")) if path == "all_to_all" else P("data")
        xg = global_array(x, x_spec)
        y = jax.jit(lambda x, p: moe_block(x, p, rc, mesh=mesh, ep_path=path)[0])(xg, pg)
        y = np.asarray(multihost_utils.process_allgather(y, tiled=True))
        result[path] = float(np.max(np.abs(y - y_ref)))
    print(json.dumps(result), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
