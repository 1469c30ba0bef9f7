"""Causal / depthwise / transposed 1-D convs against the HF modules (CausalConvNet, CausalTransConvNet) in fp32.

Tolerance 1e-5 max abs: inputs and weights are O(1), sums of at most 7*C_in products; fp32 rounding differs
between oneDNN and XLA at ~1e-6.
"""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
    Qwen3OmniMoeCausalConvNet,
    Qwen3OmniMoeCausalTransConvNet,
)

from omni_jax.ops.conv import (
    causal_conv1d,
    causal_trans_conv1d,
    polyphase_trans_conv1d,
    polyphase_weight,
    conv_weight_from_hf,
    conv_weight_to_hf,
    depthwise_causal_conv1d,
    trans_conv1d_full,
    trans_conv_out_len,
    trans_conv_weight_from_hf,
    trans_conv_weight_to_hf,
)

TOL = 1e-5


def _run_torch(mod, x_btc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y = mod(torch.from_numpy(x_btc).permute(0, 2, 1))
    return y.permute(0, 2, 1).numpy()


@pytest.mark.parametrize("c_in,c_out,k,dilation", [(6, 5, 7, 1), (4, 4, 7, 3), (4, 4, 7, 9), (5, 3, 1, 1)])
def test_causal_conv_matches_hf(c_in, c_out, k, dilation):
    torch.manual_seed(0)
    mod = Qwen3OmniMoeCausalConvNet(c_in, c_out, k, dilation=dilation).eval()
    x = np.random.default_rng(0).normal(size=(2, 23, c_in)).astype(np.float32)
    w = conv_weight_from_hf(mod.conv.weight.detach().numpy())
    y = causal_conv1d(jnp.asarray(x), jnp.asarray(w), jnp.asarray(mod.conv.bias.detach().numpy()), dilation=dilation)
    ref = _run_torch(mod, x)
    chex.assert_shape(y, ref.shape)
    np.testing.assert_allclose(np.asarray(y), ref, atol=TOL, rtol=0)
    np.testing.assert_array_equal(conv_weight_to_hf(w), mod.conv.weight.detach().numpy())


def test_causal_conv_is_causal():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 20, 3)).astype(np.float32)
    w = rng.normal(size=(7, 3, 2)).astype(np.float32)
    y0 = np.asarray(causal_conv1d(jnp.asarray(x), jnp.asarray(w), dilation=3))
    x2 = x.copy()
    x2[:, 12:] += 1.0
    y1 = np.asarray(causal_conv1d(jnp.asarray(x2), jnp.asarray(w), dilation=3))
    np.testing.assert_array_equal(y0[:, :12], y1[:, :12])
    assert np.abs(y0[:, 12:] - y1[:, 12:]).max() > 0.1


def test_depthwise_conv_matches_hf():
    torch.manual_seed(1)
    c = 8
    mod = Qwen3OmniMoeCausalConvNet(c, c, 7, groups=c).eval()
    x = np.random.default_rng(2).normal(size=(2, 17, c)).astype(np.float32)
    w = conv_weight_from_hf(mod.conv.weight.detach().numpy())
    chex.assert_shape(w, (7, 1, c))
    y = depthwise_causal_conv1d(jnp.asarray(x), jnp.asarray(w), jnp.asarray(mod.conv.bias.detach().numpy()))
    np.testing.assert_allclose(np.asarray(y), _run_torch(mod, x), atol=TOL, rtol=0)


@pytest.mark.parametrize("k,s", [(2, 2), (16, 8), (10, 5), (8, 4), (6, 3), (5, 3)])
def test_causal_trans_conv_matches_hf(k, s):
    torch.manual_seed(2)
    mod = Qwen3OmniMoeCausalTransConvNet(6, 4, k, s).eval()
    x = np.random.default_rng(3).normal(size=(2, 9, 6)).astype(np.float32)
    w_hf = mod.conv.weight.detach().numpy()
    w = trans_conv_weight_from_hf(w_hf)
    b = jnp.asarray(mod.conv.bias.detach().numpy())
    y = causal_trans_conv1d(jnp.asarray(x), jnp.asarray(w), b, s)
    ref = _run_torch(mod, x)
    chex.assert_shape(y, ref.shape)
    assert ref.shape[1] == trans_conv_out_len(9, k, s)
    np.testing.assert_allclose(np.asarray(y), ref, atol=TOL, rtol=0)
    # the untrimmed transposed conv equals torch's ConvTranspose1d
    with torch.no_grad():
        full_ref = mod.conv(torch.from_numpy(x).permute(0, 2, 1)).permute(0, 2, 1).numpy()
    full = np.asarray(trans_conv1d_full(jnp.asarray(x), jnp.asarray(w), b, s))
    np.testing.assert_allclose(full, full_ref, atol=TOL, rtol=0)
    np.testing.assert_array_equal(trans_conv_weight_to_hf(w), w_hf)


@pytest.mark.parametrize("k,s", [(2, 2), (16, 8), (10, 5), (8, 4), (6, 3), (9, 3)])
def test_polyphase_trans_conv_matches_hf(k, s):
    """The polyphase form (kernel made ahead, as ``code2wav.with_layer_views`` does) against HF's module, and
    against the dilated conv it replaces; the inputs are long enough that every output frame sums m taps."""
    torch.manual_seed(5)
    mod = Qwen3OmniMoeCausalTransConvNet(5, 3, k, s).eval()
    x = np.random.default_rng(6).normal(size=(2, 11, 5)).astype(np.float32)
    w = jnp.asarray(trans_conv_weight_from_hf(mod.conv.weight.detach().numpy()))
    b = jnp.asarray(mod.conv.bias.detach().numpy())
    pw = polyphase_weight(w, s)
    chex.assert_shape(pw, (k // s, 5, s * 3))
    y = polyphase_trans_conv1d(jnp.asarray(x), pw, b, s)
    ref = _run_torch(mod, x)
    chex.assert_shape(y, ref.shape)
    np.testing.assert_allclose(np.asarray(y), ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(causal_trans_conv1d(jnp.asarray(x), w, b, s, pw)), ref, atol=TOL, rtol=0)
    full = np.asarray(trans_conv1d_full(jnp.asarray(x), w, b, s))
    np.testing.assert_allclose(np.asarray(y), full[:, k - s: full.shape[1] - (k - s)], atol=TOL, rtol=0)


def test_trans_conv_looks_one_frame_ahead():
    """HF trims k - s samples from both ends: with k = 2s, output sample n depends on input frame floor(n/s) + 1."""
    rng = np.random.default_rng(4)
    s = 4
    x = rng.normal(size=(1, 6, 3)).astype(np.float32)
    w = jnp.asarray(rng.normal(size=(2 * s, 3, 2)).astype(np.float32))
    y0 = np.asarray(causal_trans_conv1d(jnp.asarray(x), w, None, s))
    x2 = x.copy()
    x2[:, 3] += 1.0  # change frame 3
    y1 = np.asarray(causal_trans_conv1d(jnp.asarray(x2), w, None, s))
    changed = np.nonzero(np.abs(y0 - y1).max(axis=(0, 2)) > 0)[0]
    assert changed.min() == 2 * s and changed.max() == 4 * s - 1  # frames 2 and 3 of the output
