"""The CPU MoE kernel against the XLA gather path it replaces, in float32.

Tolerance: rtol 2e-6 of the output's scale. Both sum the same float32 products (H ≤ 300 terms, then I ≤ 260,
then K ≤ 6) in different orders; the differences measured here are ≤ 6e-7 of the scale. A wrong expert, a
dropped slot, a missing partial sum or a misplaced column chunk moves outputs by O(1) of the scale.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax import kernels
from omni_jax.moe.gather import gather_moe, xla_gather_moe

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C++ compiler: the CPU kernels are off")

# H > 256 rows: the groups of up to 8 rows sum partial products over row splits; 2I = 520 > 512 columns: the
# groups of more rows run two column chunks, the second one narrow
# many_experts: 8+ experts with several rows each: every such expert is one work item over its whole matrix
SHAPES = {"tiny": (5, 40, 12), "splits_and_chunks": (6, 300, 260), "many_experts": (12, 300, 260)}


def operands(seed, S, H, I, T, K, zero_slots=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((T, H)), jnp.float32)
    gate_up = jnp.asarray(rng.standard_normal((S, H, 2 * I)) / np.sqrt(H), jnp.float32)
    down = jnp.asarray(rng.standard_normal((S, I, H)) / np.sqrt(I), jnp.float32)
    experts = np.stack([rng.choice(S, K, replace=False) for _ in range(T)]).astype(np.int32)
    weights = rng.random((T, K)).astype(np.float32)
    weights.reshape(-1)[:zero_slots] = 0.0
    return x, jnp.asarray(weights), jnp.asarray(experts), gate_up, down


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("T,K", [(1, 4), (2, 3), (13, 5), (40, 4)])  # groups of 1, 2, several and many rows
def test_kernel_matches_xla_gather(shape, T, K):
    S, H, I = SHAPES[shape]
    x, w, e, gu, dn = operands(T * 7 + K, S, H, I, T, min(K, S))
    y = jax.jit(kernels.moe_experts)(x, w, e, gu, dn)
    ref = jax.jit(xla_gather_moe)(x, w, e, gu, dn)
    chex_scale = float(jnp.abs(ref).max())
    assert y.shape == ref.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(y, ref, atol=2e-6 * chex_scale, rtol=0)


def test_large_call_handed_to_the_pool_matches_xla_gather():
    """A call that may read >= 64 MB of expert weights (T * K = 24 slots of 3 MB each) and runs first in its
    program (so on the launching thread) is handed to an XLA intra-op thread; its result is the same."""
    S, H, I, K, T = 8, 512, 512, 8, 3
    assert T * K * (H * 2 * I + I * H) * 4 >= 64 << 20
    x, w, e, gu, dn = operands(T, S, H, I, T, K)
    y = jax.jit(kernels.moe_experts)(x, w, e, gu, dn)
    ref = jax.jit(xla_gather_moe)(x, w, e, gu, dn)
    np.testing.assert_allclose(y, ref, atol=2e-6 * float(jnp.abs(ref).max()), rtol=0)


@pytest.mark.parametrize("T,K", [(1, 4), (13, 5)])
def test_xla_form_matches_xla_gather(T, K):
    """``moe_experts_xla``, what a program lowered for another platform runs instead of the kernel."""
    S, H, I = SHAPES["splits_and_chunks"]
    x, w, e, gu, dn = operands(T + K, S, H, I, T, K)
    y = jax.jit(kernels.moe_experts_xla)(x, w, e, gu, dn)
    ref = jax.jit(xla_gather_moe)(x, w, e, gu, dn)
    np.testing.assert_allclose(y, ref, atol=2e-6 * float(jnp.abs(ref).max()), rtol=0)
    other = jax.jit(kernels.moe_experts).trace(x, w, e, gu, dn).lower(lowering_platforms=("cuda",)).as_text()
    assert "OmniMoeExperts" not in other and "while" in other  # the lax.map form, not the kernel


def test_zero_weight_slots_are_skipped_and_out_of_range_experts_clamped():
    S, H, I = SHAPES["tiny"]
    x, w, e, gu, dn = operands(3, S, H, I, 4, 3, zero_slots=5)
    e_far = e.at[0, 0].set(S + 10)  # slot (0, 0) has weight 0: its expert is never read
    np.testing.assert_allclose(jax.jit(kernels.moe_experts)(x, w, e_far, gu, dn),
                               jax.jit(xla_gather_moe)(x, w, e, gu, dn), atol=2e-6, rtol=0)
    clamped = e.at[1, 0].set(S + 3)  # read as the last expert, as XLA's dynamic index clamps
    np.testing.assert_allclose(jax.jit(kernels.moe_experts)(x, w, clamped, gu, dn),
                               jax.jit(xla_gather_moe)(x, w, e.at[1, 0].set(S - 1), gu, dn), atol=2e-6, rtol=0)


def test_gather_backend_runs_the_kernel_and_its_gradient_is_the_xla_one(monkeypatch):
    S, H, I = SHAPES["tiny"]
    x, w, e, gu, dn = operands(5, S, H, I, 2, 3)
    hlo = jax.jit(lambda *a: gather_moe(a[0], a[1], a[2], None, a[3], a[4])).lower(x, w, e, gu, dn).as_text()
    assert "OmniMoeExperts" in hlo

    def loss(fn):
        return lambda x, w, gu, dn: jnp.sum(jnp.sin(fn(x, w, e, None, gu, dn)))

    grads = jax.jit(jax.grad(loss(gather_moe), argnums=(0, 1, 2, 3)))(x, w, gu, dn)
    ref = jax.jit(jax.grad(loss(lambda x, w, e, v, gu, dn: xla_gather_moe(x, w, e, gu, dn)),
                           argnums=(0, 1, 2, 3)))(x, w, gu, dn)
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)  # cos(y) at outputs 2e-6 apart

    monkeypatch.setenv("OMNI_JAX_CPU_KERNELS", "0")
    assert not kernels.available()
    off = jax.jit(lambda *a: gather_moe(a[0], a[1], a[2], None, a[3], a[4])).lower(x, w, e, gu, dn).as_text()
    assert "OmniMoeExperts" not in off


def test_kernel_silu_over_the_whole_gate_range():
    """Gates from about -150 to 150: the kernel's vectorised e^-g (clamped to e^±88) gives silu as std::exp does,
    0 below and g above, and the 16-wide loop and its scalar tail (2I = 520: 260 = 16 x 16 + 4) agree."""
    S, H, I = SHAPES["splits_and_chunks"]
    x, w, e, gu, dn = operands(3, S, H, I, 13, 5)
    gu = gu.at[:, :, :I].multiply(40.0)  # the gate half only
    y = jax.jit(kernels.moe_experts)(x, w, e, gu, dn)
    ref = jax.jit(xla_gather_moe)(x, w, e, gu, dn)
    gates = np.asarray(x) @ np.asarray(gu[0, :, :I])
    assert gates.min() < -90 and gates.max() > 90
    np.testing.assert_allclose(y, ref, atol=2e-6 * float(jnp.abs(ref).max()), rtol=0)
