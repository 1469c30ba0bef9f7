"""Expert parallelism (shard_map over an ``expert`` axis) with INT4 experts: each device holds its experts'
integers and scales (``shard_moe_params`` shards both leaves of the QuantizedWeight on the expert axis), and
both paths (psum decode, all_to_all prefill) equal the single-device block on the dequantized weights to
1e-5 max abs (fp32 summation order; reached ~1e-7). Runs in a subprocess with 4 simulated CPU devices."""

import json
import os
import subprocess
import sys

SCRIPT = r'''
import json, os
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp
jax.config.update("jax_default_matmul_precision", "highest")
from omni_jax.moe import RoutingConfig, moe_block
from omni_jax.quant import dequantize, quantize
from omni_jax.moe.parallel import shard_moe_params
from omni_jax.sharding import make_mesh
E, H, I = 8, 16, 12
k = jax.random.split(jax.random.PRNGKey(0), 4)
p = dict(router=jax.random.normal(k[0], (H, E)), gate_up=quantize(jax.random.normal(k[1], (E, H, 2 * I)) / 4, 4, 8),
         down=quantize(jax.random.normal(k[2], (E, I, H)) / 4, 4, 4))
x = jax.random.normal(k[3], (16, H))
rc = RoutingConfig(E, 2)
y_ref, _ = moe_block(x, dict(p, gate_up=dequantize(p["gate_up"]), down=dequantize(p["down"])), rc, backend="dense")
mesh = make_mesh("data=1,expert=4")
ps = shard_moe_params(p, mesh)
out = {"q_shard_rows": sorted({s.data.shape[0] for s in ps["gate_up"].q.addressable_shards}),
       "scale_shard_rows": sorted({s.data.shape[0] for s in ps["down"].scale.addressable_shards})}
for path in ("psum", "all_to_all"):
    y, _ = jax.jit(lambda x, p: moe_block(x, p, rc, mesh=mesh, ep_path=path))(x, ps)
    out[path] = float(jnp.max(jnp.abs(y - y_ref)))
print(json.dumps(out))
'''


def test_expert_parallel_with_int4_experts():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["q_shard_rows"] == [2] and res["scale_shard_rows"] == [2]  # E / 4 experts per device
    assert res["psum"] < 1e-5 and res["all_to_all"] < 1e-5, res
