"""The expert-parallel layer on a mesh that also splits the experts' own dims (8 simulated CPU devices).

INT4 experts (group 2) stored as the model stores them — stacked over layers, placed by their logical axes
(experts over ``expert``, the model width over ``fsdp``, the expert MLP width over ``tensor``) — on
``fsdp=2,tensor=2,expert=2``, where every axis splits them (integers and scales alike). Layer 1 of the stack
through both paths (2 tokens: psum, gathering only the selected experts' pieces; 16 tokens: all_to_all,
gathering the layer's local experts a chunk at a time) equals the single-device dense block on that layer's
dequantized weights to 1e-5 max abs (fp32 summation order; reached ~1e-7), and each device holds 1/8 of the
expert stacks. (Float experts on five meshes, in the whole model: tests/test_mesh.py.)
"""

import json
import os
import subprocess
import sys

SCRIPT = r'''
import json, os, sys
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp
jax.config.update("jax_default_matmul_precision", "highest")
from moe_testutil import random_moe_params, random_tokens
from omni_jax.moe import RoutingConfig, moe_block
from omni_jax.moe.parallel import shard_moe_params
from omni_jax.quant import dequantize, quantize
from omni_jax.sharding import make_mesh
E, H, I, K, L = 8, 16, 16, 2, 2
layers = [random_moe_params(s, E, H, I) for s in range(L)]
stack = jax.tree.map(lambda *a: jnp.stack(a), *layers)
q4 = dict(stack, gate_up=quantize(stack["gate_up"], 4, 2), down=quantize(stack["down"], 4, 2))
rc = RoutingConfig(E, K)
out = []
for kind, p, meshes in (("int4", q4, ("fsdp=2,tensor=2,expert=2",)),):
    ref_p = {k: (dequantize(v) if k in ("gate_up", "down") and kind == "int4" else v)[1] for k, v in p.items()}
    for spec in meshes:
        mesh = make_mesh(spec)
        ps = shard_moe_params(p, mesh)
        leaf = jax.tree.leaves(ps["gate_up"])[0]
        held = leaf.size // leaf.addressable_shards[0].data.size
        for T in (2, 16):
            x = random_tokens(T, T, H)
            y_ref, _ = moe_block(x, ref_p, rc, backend="dense")
            y, _ = jax.jit(lambda x, p: moe_block(x, p, rc, mesh=mesh, layer=1, stacked=True))(x, ps)
            out.append(dict(kind=kind, mesh=spec, T=T, held=held, err=float(jnp.max(jnp.abs(y - y_ref)))))
print(json.dumps(out))
'''


def test_fsdp_and_tensor_split_experts_match_single_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    here = os.path.dirname(__file__)
    p = subprocess.run([sys.executable, "-c", SCRIPT, here], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(runs) == 2
    for r in runs:
        assert r["err"] < 1e-5, r
        assert r["held"] == 8, r
