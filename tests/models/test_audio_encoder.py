"""AudioEncoder against HF's Qwen3OmniMoeAudioEncoder (the tiny fixture's tower), called as get_audio_features does.

fp32 tolerance 1e-4 max abs on outputs of magnitude ~6 (reached: 4e-6..7e-6; float32 summation order).
bf16: compared with HF's own bf16 run. On these magnitudes HF bf16 is ~0.1 max / 0.012 mean away from HF fp32
and ours is ~0.1 max / 0.013 mean away from HF bf16, so the check is relative: mean error against HF bf16
within 2x HF bf16's own mean error against HF fp32, and below 0.3 max abs.
Broken variants asserted to differ by >> tolerance (1e-2): attention within 100-frame chunks (MaxText's
window; asserted on the HF side, our forward with that window matches HF's to 8e-6), positions continuing
across chunks, and a short clip convolved without the batch's zero padding.
"""

from __future__ import annotations

import copy
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from audio_helpers import build_hf_audio_encoder, chirp_and_noise, fill_from_hf, hf_get_audio_features
from hf_fixtures import tiny_config_dict
from omni_jax.config import AudioConfig
from omni_jax.models import audio_encoder as ae
from omni_jax.models.common import pure_params
from omni_jax.processing.audio import AudioFeatures, log_mel_features

TOL = 1e-4
CFG = AudioConfig.from_hf(tiny_config_dict()["thinker_config"]["audio_config"])


@pytest.fixture(scope="module")
def hf_encoder():
    return build_hf_audio_encoder(seed=0)


@pytest.fixture(scope="module")
def params(hf_encoder):
    model = ae.AudioEncoder(CFG, rngs=nnx.Rngs(0))
    tensors = {k: v.numpy() for k, v in hf_encoder.state_dict().items()}
    return jax.tree.map(jnp.asarray, fill_from_hf(pure_params(model), tensors, ae.hf_rules(CFG)))


def _features(frame_counts: list[int], seed: int = 0) -> AudioFeatures:
    """A padded batch of chirp/noise log-mels with exactly ``frame_counts`` valid frames (clip i seeded seed+i).

    Each clip is featurised alone, so a clip's features do not depend on its batch companions (the batch
    semantics of the processor are covered in tests/processing/test_audio.py).
    """
    mels = [log_mel_features([chirp_and_noise(n / 100, 16000, seed=seed + i)]).input_features[0]
            for i, n in enumerate(frame_counts)]
    t = max(frame_counts)
    features = np.full((len(mels), mels[0].shape[0], t), -1.5, np.float32)
    mask = np.zeros((len(mels), t), np.int32)
    for i, m in enumerate(mels):
        assert m.shape[-1] == frame_counts[i]
        features[i, :, : m.shape[-1]] = m
        mask[i, : m.shape[-1]] = 1
    return AudioFeatures(features, mask)


def _forward(p, features, counts):
    return ae.encode(p, features, counts, cfg=CFG, dtype=None)  # shares its compilations with AudioEncoder.__call__


def _bucketed(features: np.ndarray) -> np.ndarray:
    """Pad the frame axis to its jit bucket (whole 800-frame windows), as a caller of the encoder does."""
    t = features.shape[-1]
    return np.pad(features, ((0, 0), (0, 0), (0, ae.bucket_frames(t, CFG) - t)))


def _ours(p, feats: AudioFeatures, forward=_forward) -> np.ndarray:
    out = forward(p, jnp.asarray(_bucketed(feats.input_features)), jnp.asarray(feats.frame_counts))
    counts = ae.audio_token_counts(feats.frame_counts, CFG)
    chex.assert_shape(out, (len(counts), None, CFG.output_dim))
    return np.asarray(ae.pack_audio_embeddings(out, counts))


def _ref(hf_encoder, feats: AudioFeatures) -> np.ndarray:
    return hf_get_audio_features(hf_encoder, feats.input_features, feats.feature_attention_mask)


def _maxdiff(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


# ---------------------------------------------------------------------------------------------- parity


def test_single_audio_ending_mid_chunk(hf_encoder, params):
    feats = _features([303])  # 3 full chunks + 3 frames -> 13 * 3 + 1 tokens
    ref = _ref(hf_encoder, feats)
    chex.assert_shape(ref, (40, CFG.output_dim))
    assert _maxdiff(_ours(params, feats), ref) <= TOL

    # broken: attention within 100-frame chunks (MaxText) instead of 104-token windows. Our forward with
    # that window was checked by hand to match HF run with it; asserted here on the HF side (no recompile).
    narrow = copy.deepcopy(hf_encoder)
    narrow.n_window_infer = 2 * CFG.n_window
    assert _maxdiff(_ours(params, feats), _ref(narrow, feats)) > 100 * TOL


def test_positions_must_restart_per_chunk(hf_encoder, params, monkeypatch):
    feats = _features([303])
    ref = _ref(hf_encoder, feats)

    def continuing(n_chunks, tokens, d_model):  # broken: one running position over the whole audio
        return ae.sinusoid_positions(n_chunks * tokens, d_model).reshape(n_chunks, tokens, d_model)

    monkeypatch.setattr(ae, "chunk_positions", continuing)
    broken = jax.jit(lambda p, f, n: ae.audio_encoder_forward(p, f, n, CFG))
    assert _maxdiff(_ours(params, feats, broken), ref) > 100 * TOL


BATCH = [50, 304, 1200]  # one clip shorter than a chunk, one ending 4 frames into a chunk, one of 12 chunks


def test_batch_of_three_lengths(hf_encoder, params):
    """Different lengths: windows, packing and the padding of every chunk to the batch's longest (100)."""
    feats = _features(BATCH)
    ref = _ref(hf_encoder, feats)
    chex.assert_shape(ref, (7 + 40 + 156, CFG.output_dim))
    assert _maxdiff(_ours(params, feats), ref) <= TOL


def test_zero_padding_quirk(hf_encoder, params):
    """A 50-frame clip alone is padded to 50 frames; beside longer clips, to 100 - and the reference changes."""
    alone, beside = _features(BATCH[:1]), _features(BATCH)  # the same 50-frame clip first
    np.testing.assert_array_equal(alone.input_features[0, :, :50], beside.input_features[0, :, :50])
    ref_alone, ref_beside = _ref(hf_encoder, alone), _ref(hf_encoder, beside)[:7]
    assert _maxdiff(ref_alone, ref_beside) > 100 * TOL  # the quirk is visible in this fixture
    assert _maxdiff(_ours(params, alone), ref_alone) <= TOL
    assert _maxdiff(_ours(params, beside)[:7], ref_beside) <= TOL


def test_minute_long_audio(hf_encoder, params):
    """60 s: 60 chunks, 780 tokens, 8 windows (the last of 52 tokens); the stem in groups of 24 chunks."""
    feats = _features([6000])
    ref = _ref(hf_encoder, feats)
    chex.assert_shape(ref, (780, CFG.output_dim))
    grouped = dataclasses.replace(CFG, conv_chunksize=24)  # 64 bucketed chunks -> lax.map over 24 + 24 + 16
    forward = jax.jit(lambda p, f, n: ae.audio_encoder_forward(p, f, n, grouped))
    assert _maxdiff(_ours(params, feats, forward), ref) <= TOL


def test_padding_beyond_counts_is_ignored(params):
    """Extra (garbage) frames past each count, up to a larger bucket, change nothing: buckets are safe."""
    feats = _features(BATCH)
    t = feats.input_features.shape[-1]
    bucket = ae.bucket_frames(t, CFG)
    assert bucket == 1600 and ae.bucket_frames(801, CFG) == 1600 and ae.bucket_frames(1601, CFG) == 3200
    padded = np.full((3, 128, bucket), 7.0, np.float32)
    padded[:, :, :t] = feats.input_features
    padded[0, :, 50:] = -3.0  # garbage after a short audio's last frame
    same = AudioFeatures(padded, np.zeros((3, bucket), np.int32))
    out_a = _forward(params, jnp.asarray(_bucketed(feats.input_features)), jnp.asarray(feats.frame_counts))
    out_b = _forward(params, jnp.asarray(same.input_features), jnp.asarray(feats.frame_counts))
    counts = ae.audio_token_counts(feats.frame_counts, CFG)
    np.testing.assert_allclose(ae.pack_audio_embeddings(out_a, counts), ae.pack_audio_embeddings(out_b, counts),
                               atol=1e-6)


def test_bf16_against_hf_bf16(hf_encoder, params):
    import torch

    feats = _features(BATCH)
    ref32 = _ref(hf_encoder, feats)
    hf16 = copy.deepcopy(hf_encoder).to(torch.bfloat16)
    ref16 = hf_get_audio_features(hf16, feats.input_features, feats.feature_attention_mask, dtype=torch.bfloat16)
    p16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    out = _forward(p16, jnp.asarray(_bucketed(feats.input_features)), jnp.asarray(feats.frame_counts))
    chex.assert_type(out, jnp.bfloat16)
    ours16 = np.asarray(ae.pack_audio_embeddings(out, ae.audio_token_counts(feats.frame_counts, CFG)), np.float32)
    hf_own_error = np.abs(ref16 - ref32).mean()
    assert np.abs(ours16 - ref16).mean() <= 2 * hf_own_error
    assert _maxdiff(ours16, ref16) <= 0.3


def test_module_call_and_token_counts(params):
    model = ae.AudioEncoder(CFG, rngs=nnx.Rngs(1))
    feats = _features([250])
    out = model(jnp.asarray(_bucketed(feats.input_features)), jnp.asarray(feats.frame_counts))
    chex.assert_shape(out, (1, 8 * 13, CFG.output_dim))
    chex.assert_tree_all_finite(out)
    from omni_jax.processing.audio import audio_token_counts as processor_counts

    lengths = np.arange(0, 3000)
    np.testing.assert_array_equal(ae.audio_token_counts(lengths, CFG), processor_counts(lengths))


# ----------------------------------------------------------------------------------------------- rules


def _check_rules_cover(rules, hf_shapes: dict[str, tuple], param_shapes: dict[str, tuple]):
    matched_params = set()
    for name, shape in hf_shapes.items():
        hits = [r for r in rules if r.match(name) is not None]
        assert len(hits) == 1, f"{name}: {len(hits)} rules"
        r = hits[0]
        idx = r.match(name)
        slot = param_shapes[r.param]
        if idx and any(idx):  # stacked layers share one shape: convert layer 0's only
            assert shape == hf_shapes[r.hf.format(**{k: 0 for k in r.index})], name
            matched_params.add(r.param)
            continue
        converted = r.to_param(np.zeros(shape, np.float32)).shape
        expected = slot[len(idx):]
        if r.part is not None:
            expected = expected[:-1] + (expected[-1] // r.part[1],)
        assert converted == expected, (name, converted, expected)
        back = r.to_hf(np.zeros(converted, np.float32)).shape
        assert back == tuple(shape), (name, back, shape)
        matched_params.add(r.param)
    assert matched_params == set(param_shapes), set(param_shapes) ^ matched_params
    for r in rules:  # every name a rule enumerates exists
        for name, _ in r.names():
            assert name in hf_shapes, name


def _param_shapes(cfg: AudioConfig) -> dict[str, tuple]:
    abstract = nnx.eval_shape(lambda: ae.AudioEncoder(cfg, rngs=nnx.Rngs(0)))
    flat = nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    return {".".join(map(str, path)): tuple(v.value.shape) for path, v in flat}


def test_rules_cover_tiny_tensors(hf_encoder):
    hf_shapes = {k: tuple(v.shape) for k, v in hf_encoder.state_dict().items()}
    _check_rules_cover(ae.hf_rules(CFG), hf_shapes, _param_shapes(CFG))


def test_rules_cover_real_model_names_and_shapes():
    """Real widths and 32 layers, from HF's module built on the meta device (no memory, no download).

    The audio tower's names are the same on disk (``thinker.audio_tower.*``) and in memory
    (``thinker.model.audio_tower.*``) below the prefix.
    """
    import torch
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

    real = AudioConfig()
    hf_cfg = Qwen3OmniMoeAudioEncoderConfig(**{f.name: getattr(real, f.name) for f in dataclasses.fields(real)})
    with torch.device("meta"):
        enc = Qwen3OmniMoeAudioEncoder(hf_cfg)
    hf_shapes = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert len(hf_shapes) == 32 * 16 + 7 + 6
    assert hf_shapes["conv_out.weight"] == (1280, 7680) and hf_shapes["proj2.weight"] == (2048, 1280)
    _check_rules_cover(ae.hf_rules(real), hf_shapes, _param_shapes(real))
    from omni_jax.weights.mapping import NameTable  # the project's loader table accepts the rules too

    table = NameTable(ae.hf_rules(real), _param_shapes(real))
    assert {n: table.hf_shape(n) for n in table.names()} == hf_shapes


def test_conv_paths_agree(params, monkeypatch):
    """The stem's nine-matmul conv (CPU) and XLA's conv (accelerators) agree."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 50, CFG.downsample_hidden_size)), jnp.float32)
    by_taps = ae._conv2d_s2(x, params["conv2"], jnp.float32)
    monkeypatch.setattr(ae, "conv_by_taps", lambda: False)
    by_xla = ae._conv2d_s2(x, params["conv2"], jnp.float32)
    chex.assert_shape(by_xla, (2, 32, 25, CFG.downsample_hidden_size))
    np.testing.assert_allclose(by_taps, by_xla, atol=1e-5)
