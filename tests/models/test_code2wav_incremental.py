"""Incremental Code2Wav (``code2wav_incremental``) against a one-shot decode and HF's ``chunked_decode``.

Same tamed tiny model as ``test_code2wav`` (its decoder rescaled so the waveform is mostly unsaturated).
The tiny config's sliding window is 8 frames, so 23 frames in pieces exercise the window on cached keys.
Tolerance 1e-4 max abs, as in ``test_code2wav`` (values O(0.3)); reached 6.6e-6 and 8.1e-6 against our own one-shot decode.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from test_code2wav import TOL, _codes, _hf_decode, setup  # noqa: F401 (the module-scoped fixture)

from omni_jax.models.code2wav import Code2WavStreamer, chunked_decode, decode_jit, total_upsample, wav_length
from omni_jax.models.code2wav_incremental import decode_after_jit, history_shapes, initial_state
from omni_jax.models.common import pure_params


def _incremental(params, codes, cfg, pieces, width=None):
    """Decode ``codes`` [B, Q, T] in pieces of the given sizes (each right-padded to ``width`` if given)."""
    state = initial_state(cfg, codes.shape[0], codes.shape[-1] + (width or 0))
    out, start = [], 0
    for n in pieces:
        piece = codes[..., start:start + n]
        w = width or n
        piece = np.pad(piece, ((0, 0), (0, 0), (0, w - n)))
        wav, state = decode_after_jit(params, state, jnp.asarray(piece, jnp.int32), start, n, cfg=cfg,
                                      first=start == 0)
        keep = wav_length(n, cfg) if start == 0 else total_upsample(cfg) * n
        out.append(np.asarray(wav)[:, :keep])
        start += n
    return np.concatenate(out, axis=-1)


@pytest.mark.parametrize("pieces,width", [((5, 4, 4, 4, 6), None), ((3, 7, 1, 6, 6), 8)])
def test_pieces_equal_one_shot_decode(setup, pieces, width):
    """Decoding 23 frames piece by piece (with and without right padding) gives the one-shot decode's samples."""
    hf, model, cfg = setup
    codes = _codes(3, 2, sum(pieces), cfg)
    params = pure_params(model)
    whole = np.asarray(decode_jit(params, jnp.asarray(codes, jnp.int32), cfg))
    out = _incremental(params, codes, cfg, pieces, width)
    assert out.shape == whole.shape
    err = np.abs(out - whole).max()
    print(f"pieces {pieces}: max abs diff vs one-shot {err:.2e}")
    assert err <= TOL
    np.testing.assert_allclose(out, _hf_decode(hf, codes), atol=TOL, rtol=0)


def test_state_is_needed(setup):
    """Dropping the carried state (fresh state for the second piece) breaks the samples by >> tolerance."""
    _, model, cfg = setup
    codes = _codes(4, 1, 12, cfg)
    params = pure_params(model)
    whole = np.asarray(decode_jit(params, jnp.asarray(codes, jnp.int32), cfg))
    state = initial_state(cfg, 1, 12)
    _, state = decode_after_jit(params, state, jnp.asarray(codes[..., :6], jnp.int32), 0, 6, cfg=cfg, first=True)
    fresh = jax.tree.map(jnp.zeros_like, state)
    for s, broken in ((state, False), (dict(state, history=fresh["history"]), True),
                      (dict(state, k=fresh["k"], v=fresh["v"]), True),
                      (dict(state, previous=fresh["previous"]), True)):
        wav, _ = decode_after_jit(params, s, jnp.asarray(codes[..., 6:], jnp.int32), 6, 6, cfg=cfg, first=False)
        err = np.abs(np.asarray(wav) - whole[:, wav_length(6, cfg):]).max()
        assert (err > 100 * TOL) if broken else (err <= TOL), (broken, err)


def test_history_shapes_cover_every_causal_conv(setup):
    _, _, cfg = setup
    shapes = history_shapes(cfg)
    assert len(shapes) == len(cfg.upsampling_ratios) + 2 + 3 * len(cfg.upsample_rates)
    assert shapes["block0.res2"] == (6 * 9, cfg.decoder_dim // 2)


@pytest.mark.parametrize("chunk_size,left_context,frames", [(4, 12, 23), (4, 30, 23)])
def test_streamer_matches_hf_chunked_decode(setup, chunk_size, left_context, frames):
    """The streamer decodes incrementally while every earlier frame is context (start <= left_context), then
    in windows: its pieces are HF's ``chunked_decode`` either way; frame-by-frame pushes give the same."""
    hf, model, cfg = setup
    codes = _codes(9, 1, frames, cfg)
    with torch.no_grad():
        ref = hf.chunked_decode(torch.from_numpy(codes), chunk_size, left_context)[:, 0].numpy()
    out = chunked_decode(pure_params(model), codes, cfg, chunk_size, left_context)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=TOL, rtol=0)
    s = Code2WavStreamer(pure_params(model), cfg, chunk_size, left_context)
    pieces = [p for t in range(frames) for p in s.push(codes[..., t])] + s.flush()
    np.testing.assert_array_equal(np.concatenate(pieces, axis=-1), out)
