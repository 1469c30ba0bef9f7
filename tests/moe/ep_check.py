"""Run by test_parallel.py in a subprocess with 8 simulated CPU devices; prints one JSON line of results."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from moe_testutil import random_moe_params, random_tokens  # noqa: E402
from omni_jax.moe import RoutingConfig, moe_block  # noqa: E402
from omni_jax.moe.parallel import shard_moe_params
from omni_jax.sharding import make_mesh  # noqa: E402


GRAD_RUNS = {("data=1,expert=8", "psum"), ("data=1,expert=8", "all_to_all"), ("data=2,expert=4", "all_to_all"),
             ("data=4,expert=2", "psum")}


def main():
    E, H, I, K = 16, 16, 12, 4
    p = random_moe_params(0, E, H, I, shared=8)
    rc = RoutingConfig(E, K)
    out = {"devices": jax.device_count(), "runs": []}

    def loss(p, x, **kw):
        y, st = moe_block(x, p, rc, **kw)
        return jnp.sum(jnp.sin(y)) + st.aux_loss

    for T in (16, 13):  # 13: not a multiple of the token shards (padded inside)
        x = random_tokens(0, T, H)
        y_ref, st_ref = jax.jit(lambda x, p: moe_block(x, p, rc, backend="dense"))(x, p)
        g_ref = jax.jit(jax.grad(lambda p, x: loss(p, x, backend="dense")))(p, x) if T == 16 else None
        for spec in ("data=1,expert=8", "data=2,expert=4", "data=4,expert=2"):
            if T == 13 and spec != "data=2,expert=4":
                continue
            mesh = make_mesh(spec)
            ps = shard_moe_params(p, mesh)
            n_exp = mesh.shape["expert"]
            shard_experts = sorted({s.data.shape[0] for s in ps["gate_up"].addressable_shards}
                                   | {s.data.shape[0] for s in ps["down"].addressable_shards})
            for path in ("psum", "all_to_all") if T == 16 else ("all_to_all",):
                y, st = jax.jit(lambda x, p: moe_block(x, p, rc, mesh=mesh, ep_path=path))(x, ps)
                gerr, gspec = None, None
                if (spec, path) in GRAD_RUNS and T == 16:  # a subset keeps the test fast; every mesh, both paths
                    g = jax.jit(jax.grad(lambda p, x: loss(p, x, mesh=mesh, ep_path=path)))(ps, x)
                    gerr = max(float(jnp.max(jnp.abs(g[k] - g_ref[k])) / jnp.max(jnp.abs(g_ref[k]))) for k in g)
                    gspec = str(g["gate_up"].sharding.spec)
                out["runs"].append(dict(
                    T=T, mesh=spec, path=path, n_expert=n_exp, shard_experts=shard_experts,
                    spec=str(ps["gate_up"].sharding.spec), grad_spec=gspec,
                    y_err=float(jnp.max(jnp.abs(y - y_ref))),
                    aux_err=float(abs(st.aux_loss - st_ref.aux_loss)),
                    counts_equal=bool(jnp.all(st.counts == st_ref.counts)),
                    grad_rel_err=gerr,
                ))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
