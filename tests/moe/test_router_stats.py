"""Router (reference semantics and hooks) and statistics (aux loss == transformers' load_balancing_loss_func).

Reference router: exact same top-k experts, weights to 1e-6 (fp32 softmax on both sides).
Aux loss: 1e-6 relative to HF's value, with and without an attention mask, one layer and pooled layers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import load_balancing_loss_func

from moe_testutil import random_moe_params, random_tokens
from omni_jax.config import TALKER_TEXT_DEFAULTS, TextConfig
from omni_jax.moe import RoutingConfig, RoutingError, aux_loss_over_layers, route
from omni_jax.moe.stats import compute_stats

E, H = 8, 16


def torch_router(x, w, k, norm):
    logits = torch.from_numpy(np.array(x)) @ torch.from_numpy(np.array(w))
    probs = torch.softmax(logits, dim=-1, dtype=torch.float)
    v, i = torch.topk(probs, k, dim=-1)
    if norm:
        v = v / v.sum(-1, keepdim=True)
    return v.numpy(), i.numpy(), logits


@pytest.mark.parametrize("k,norm", [(2, True), (3, False), (E, True)])
def test_router_matches_reference(k, norm):
    p = random_moe_params(0, E, H, 4)
    x = random_tokens(0, 17, H)
    r = route(x, p["router"], RoutingConfig(E, k, norm))
    v, i, _ = torch_router(x, p["router"], k, norm)
    np.testing.assert_array_equal(r.experts, i)
    np.testing.assert_allclose(r.weights, v, atol=1e-6)
    assert r.weights.dtype == x.dtype and bool(r.slot_valid.all())


def test_from_text_config_and_validation():
    rc = RoutingConfig.from_text_config(TextConfig())
    assert (rc.num_experts, rc.top_k, rc.norm_topk_prob) == (128, 8, True) and rc.is_reference
    assert RoutingConfig.from_text_config(TextConfig(**TALKER_TEXT_DEFAULTS), top_p=0.5).top_k == 6
    hash(rc.replace(expert_keep_mask=(True,) * 128))  # static under jit
    for bad in (dict(top_k=0), dict(top_k=9), dict(top_p=1.5), dict(expert_keep_mask=(True,) * 3),
                dict(expert_keep_mask=(False,) * E), dict(temperature=0.0), dict(capacity_factor=-1.0)):
        with pytest.raises(RoutingError):
            RoutingConfig(**{"num_experts": E, "top_k": 2, **bad})


def test_hooks():
    p = random_moe_params(1, E, H, 4)
    x = random_tokens(1, 40, H)
    w = p["router"]
    base = route(x, w, RoutingConfig(E, 4))
    # top-k override
    assert route(x, w, RoutingConfig(E, 4).replace(top_k=1)).experts.shape == (40, 1)
    # top-p: the fewest experts whose mass reaches p (≤ max k), static shape, renormalised
    r = route(x, w, RoutingConfig(E, 4, top_p=0.5))
    probs = np.sort(np.asarray(jax.nn.softmax(x @ w)), axis=-1)[:, ::-1]
    need = np.minimum(np.argmax(np.cumsum(probs, -1) >= 0.5, -1) + 1, 4)
    np.testing.assert_array_equal(np.asarray(r.slot_valid).sum(-1), need)
    np.testing.assert_allclose(np.asarray(r.weights).sum(-1), 1.0, atol=1e-6)
    assert r.experts.shape == (40, 4) and 1 < need.mean() < 4
    # keep mask: pruned never chosen; equals routing over the kept sub-router, renormalised
    keep = (True, False, True, True, False, True, True, False)
    r = route(x, w, RoutingConfig(E, 2, expert_keep_mask=keep))
    kept = np.flatnonzero(keep)
    v, i, _ = torch_router(x, np.asarray(w)[:, kept], 2, True)
    np.testing.assert_array_equal(r.experts, kept[i])
    np.testing.assert_allclose(r.weights, v, atol=1e-6)
    # temperature → softmax(z / T); bias → softmax(z + b); selection-only bias keeps the weights' source
    r = route(x, w, RoutingConfig(E, 2, norm_topk_prob=False, temperature=2.0))
    np.testing.assert_allclose(r.probs, jax.nn.softmax((x @ w) / 2.0), atol=1e-6)
    b = tuple(float(v) for v in np.linspace(-3, 3, E))
    r = route(x, w, RoutingConfig(E, 2, bias=b))
    np.testing.assert_allclose(r.probs, jax.nn.softmax(x @ w + jnp.asarray(b)), atol=1e-6)
    r = route(x, w, RoutingConfig(E, 2, norm_topk_prob=False, bias=(0.0,) * 7 + (10.0,), bias_selection_only=True))
    assert np.all(np.asarray(r.experts)[:, 0] == 7)
    np.testing.assert_allclose(r.weights[:, 0], jax.nn.softmax(x @ w)[:, 7], atol=1e-6)
    # seeded random routing: reproducible, distinct experts, unrelated to the router
    rr = [route(x, w, RoutingConfig(E, 3, random_seed=s)).experts for s in (7, 7, 8)]
    np.testing.assert_array_equal(rr[0], rr[1])
    assert not np.array_equal(rr[0], rr[2])
    assert all(len(set(row)) == 3 for row in np.asarray(rr[0]).tolist())
    assert np.mean(np.asarray(rr[0])[:, 0] == np.asarray(base.experts)[:, 0]) < 0.5
    # capacity: no expert over ceil(cf·T·k/E); first choices win
    rc = RoutingConfig(E, 2, capacity_factor=0.5)
    r = route(x, w, rc)
    st = compute_stats(r, rc, jnp.ones(40, bool))
    assert int(st.counts.max()) <= rc.capacity(40) == 5 and int(st.dropped) == 80 - int(st.counts.sum()) > 0


def test_per_layer_hooks_under_scan():
    p = random_moe_params(2, E, H, 4)
    x = random_tokens(2, 9, H)
    masks = ((True,) * E, (False,) * 4 + (True,) * 4)
    rc = RoutingConfig(E, 3, top_k_per_layer=(3, 1), expert_keep_mask_per_layer=masks)

    def body(c, layer):
        r = route(x, p["router"], rc, layer=layer)
        return c, (r.slot_valid.sum(-1), r.experts)

    _, (n, ex) = jax.lax.scan(body, None, jnp.arange(2))
    assert np.all(np.asarray(n[0]) == 3) and np.all(np.asarray(n[1]) == 1)
    assert np.all(np.asarray(ex[1])[:, 0] >= 4)
    with pytest.raises(RoutingError, match="layer index"):
        route(x, p["router"], rc)


def hf_aux(logits_list, k, mask=None):
    t = tuple(torch.from_numpy(np.array(l)) for l in logits_list)
    m = None if mask is None else torch.from_numpy(np.asarray(mask).astype(np.int64))
    return float(load_balancing_loss_func(t, E, k, m))


def test_stats_and_aux_loss_match_hf():
    p = random_moe_params(3, E, H, 4)
    x = random_tokens(3, 2 * 6, H)
    rc = RoutingConfig(E, 2)
    mask = np.ones((2, 6), bool)
    mask[1, :2] = False  # left padding
    r = route(x, p["router"], rc)
    full = compute_stats(r, rc, jnp.ones(12, bool))
    masked = compute_stats(r, rc, jnp.asarray(mask.reshape(-1)), with_router_outputs=True)
    assert full.aux_loss == pytest.approx(hf_aux([r.logits], 2), rel=1e-6)
    assert masked.aux_loss == pytest.approx(hf_aux([r.logits], 2, mask), rel=1e-6)
    assert masked.router_logits.shape == (12, E) and masked.top_k_experts.shape == (12, 2)
    # counts / entropy / max-violation, padding excluded
    e = np.asarray(r.experts)[mask.reshape(-1)]
    np.testing.assert_array_equal(masked.counts, np.bincount(e.reshape(-1), minlength=E))
    pr = np.asarray(r.probs)[mask.reshape(-1)]
    assert float(masked.entropy) == pytest.approx(float(np.mean(-(pr * np.log(pr)).sum(-1))), rel=1e-5)
    c = np.asarray(masked.counts)
    assert float(masked.max_violation) == pytest.approx(c.max() / c.mean(), rel=1e-6)
    # several layers: stats stacked by scan, pooled as HF pools them
    layers = [random_moe_params(10 + i, E, H, 4)["router"] for i in range(3)]

    def body(c, w):
        r = route(x, w, rc)
        return c, (compute_stats(r, rc, jnp.asarray(mask.reshape(-1))), r.logits)

    _, (stacked, logits) = jax.lax.scan(body, None, jnp.stack(layers))
    assert stacked.counts.shape == (3, E)
    assert float(aux_loss_over_layers(stacked)) == pytest.approx(hf_aux(list(logits), 2, mask), rel=1e-6)
