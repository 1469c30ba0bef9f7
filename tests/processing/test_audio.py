"""Audio loading and log-mel features against the reference pipeline.

References: ``librosa.load(path, sr=16000)`` and transformers' ``load_audio(backend="soundfile")`` for loading
(must agree bit for bit), HF ``WhisperFeatureExtractor`` from the checkpoint's preprocessor_config.json
called as ``Qwen3OmniMoeProcessor`` calls it for features. Feature tolerance 1e-4 max abs: the reference
computes the STFT in float32 (torch), ours in float64; the measured gap is ~5e-5 on speech, chirps and noise.
"""

from __future__ import annotations

from pathlib import Path

import chex
import numpy as np
import pytest
import soundfile as sf

from audio_helpers import (FORMATS, RATES, chirp_and_noise, espeak_available, espeak_speech, hf_features,
                           write_variants)
from omni_jax.processing.audio import (AudioFeatureConfig, AudioInputError, audio_token_counts, load_audio,
                                       load_features, log_mel_features, mel_filters)

FEATURE_TOL = 1e-4


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="module", params=["chirp", "speech"])
def source_files(request, audio_dir) -> list[Path]:
    """Every rate x layout x format variant of one source: a synthetic chirp (always) or espeak-ng speech."""
    if request.param == "speech":
        if not espeak_available():
            pytest.skip("espeak-ng not installed")
        signal, rate = sf.read(str(espeak_speech(audio_dir / "espeak.wav")), dtype="float32")
    else:
        rate = 22050
        signal = chirp_and_noise(3.3, rate)
    return write_variants(signal, rate, audio_dir / request.param, request.param)


def test_mel_filters_match_hf_and_librosa():
    import librosa
    from transformers.audio_utils import mel_filter_bank

    ours = mel_filters(AudioFeatureConfig())
    hf = mel_filter_bank(num_frequency_bins=201, num_mel_filters=128, min_frequency=0.0, max_frequency=8000.0,
                         sampling_rate=16000, norm="slaney", mel_scale="slaney")
    lib = librosa.filters.mel(sr=16000, n_fft=400, n_mels=128, fmin=0.0, fmax=8000.0, htk=False, norm="slaney",
                              dtype=np.float64)
    chex.assert_shape(ours, (201, 128))
    np.testing.assert_allclose(ours, hf, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours, lib.T, rtol=0, atol=1e-12)


def test_config_reads_checkpoint_preset():
    cfg = AudioFeatureConfig.from_file()
    assert (cfg.feature_size, cfg.sampling_rate, cfg.hop_length, cfg.n_fft) == (128, 16000, 160, 400)


def test_load_matches_librosa_and_transformers(source_files):
    import librosa
    from transformers.audio_utils import load_audio as hf_load_audio

    assert len(source_files) == len(RATES) * len(FORMATS) * 2
    for path in source_files:
        ours = load_audio(path)
        chex.assert_type(ours, np.float32)
        assert ours.ndim == 1
        ref, sr = librosa.load(str(path), sr=16000)
        assert sr == 16000
        np.testing.assert_array_equal(ours, ref, err_msg=str(path))
        np.testing.assert_array_equal(ours, hf_load_audio(str(path), 16000, backend="soundfile"), err_msg=str(path))


@pytest.mark.parametrize("ext", list(FORMATS))
def test_features_match_whisper_extractor(source_files, ext):
    """One padded batch per format (all rates, mono and stereo): features and mask equal the reference's."""
    paths = [p for p in source_files if p.suffix == f".{ext}"]
    waves = [load_audio(p) for p in paths]
    # make lengths differ so batch padding, the reference's padded-row maximum and the mask are exercised
    waves = [w[: len(w) - 811 * i] for i, w in enumerate(waves)]
    ours = log_mel_features(waves)
    ref_feat, ref_mask = hf_features(waves)
    chex.assert_shape(ours.input_features, ref_feat.shape)
    chex.assert_type(ours.input_features, np.float32)
    np.testing.assert_array_equal(ours.feature_attention_mask, ref_mask)
    assert np.abs(ours.input_features - ref_feat).max() <= FEATURE_TOL


def test_load_features_on_files(source_files):
    paths = [p for p in source_files if "48000_stereo" in p.name]
    ours = load_features(paths)
    ref_feat, ref_mask = hf_features([load_audio(p) for p in paths])
    np.testing.assert_array_equal(ours.feature_attention_mask, ref_mask)
    assert np.abs(ours.input_features - ref_feat).max() <= FEATURE_TOL


def test_batch_padding_and_mask():
    """Lengths on and off the hop grid, shortest first and last; the longest not a multiple of the hop."""
    base = chirp_and_noise(2.0, 16000, seed=3)
    waves = [base[:1000], base[:16000], base[:160 * 37], base[:31999], base[:250]]
    ours = log_mel_features(waves)
    ref_feat, ref_mask = hf_features(waves)
    np.testing.assert_array_equal(ours.feature_attention_mask, ref_mask)
    # shorter clips get ceil(n / 160) frames, the longest floor(n / 160)
    np.testing.assert_array_equal(ours.frame_counts, [7, 100, 37, 199, 2])
    assert np.abs(ours.input_features - ref_feat).max() <= FEATURE_TOL


def test_silence_and_quiet_input():
    waves = [np.zeros(16000, np.float32), np.full(4000, 1e-6, np.float32), chirp_and_noise(0.5, 16000) * 1e-4]
    ours = log_mel_features(waves)
    ref_feat, ref_mask = hf_features(waves)
    np.testing.assert_array_equal(ours.feature_attention_mask, ref_mask)
    assert np.abs(ours.input_features - ref_feat).max() <= FEATURE_TOL
    np.testing.assert_allclose(log_mel_features([np.zeros(8000, np.float32)]).input_features, -1.5)


def test_long_audio_is_not_truncated():
    """Beyond n_samples (300 s) the processor neither truncates nor splits: 5.5 minutes -> 33,000 frames."""
    w = np.tile(chirp_and_noise(5.5, 16000, seed=1), 60)
    ours = log_mel_features([w, w[: 16000 * 7]])
    ref_feat, ref_mask = hf_features([w, w[: 16000 * 7]])
    chex.assert_shape(ours.input_features, (2, 128, 33000))
    np.testing.assert_array_equal(ours.feature_attention_mask, ref_mask)
    np.testing.assert_array_equal(ours.frame_counts, [33000, 700])
    assert np.abs(ours.input_features - ref_feat).max() <= FEATURE_TOL


def test_audio_token_counts_match_processor():
    from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import _get_feat_extract_output_lengths

    lengths = np.arange(1, 2500)
    np.testing.assert_array_equal(audio_token_counts(lengths), _get_feat_extract_output_lengths(lengths, 50))
    assert audio_token_counts([100, 3000, 30000]).tolist() == [13, 390, 3900]


# ------------------------------------------------------------------------------------------ bad input


def _assert_one_line_naming(err: pytest.ExceptionInfo, path: Path):
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert str(path) in msg and "\n" not in msg, msg


def test_missing_empty_corrupt_unsupported(tmp_path):
    missing = tmp_path / "missing.wav"
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    garbage = tmp_path / "noise.flac"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    text = tmp_path / "notes.txt"
    text.write_text("not audio at all\n" * 50)
    for path in (missing, empty, corrupt, garbage, text):
        with pytest.raises(AudioInputError) as err:
            load_audio(path)
        _assert_one_line_naming(err, path)


def test_file_without_samples_and_too_short(tmp_path):
    no_samples = tmp_path / "zero.wav"
    sf.write(str(no_samples), np.zeros(0, np.float32), 16000)
    short = tmp_path / "short.wav"
    sf.write(str(short), np.zeros(100, np.float32), 16000)
    for path, word in ((no_samples, "no audio samples"), (short, "too short")):
        with pytest.raises(AudioInputError, match=word) as err:
            load_audio(path)
        _assert_one_line_naming(err, path)


def test_silent_file_is_valid(tmp_path):
    path = tmp_path / "silence.flac"
    sf.write(str(path), np.zeros((44100, 2), np.float32), 44100)
    w = load_audio(path)
    chex.assert_shape(w, (16000,))
    feats = load_features([path])
    np.testing.assert_allclose(feats.input_features, -1.5)


def test_bad_waveform_arrays():
    with pytest.raises(AudioInputError, match="empty"):
        log_mel_features([np.zeros(0, np.float32)])
    with pytest.raises(AudioInputError, match="mono"):
        log_mel_features([np.zeros((2, 400), np.float32)])
    with pytest.raises(AudioInputError, match="non-finite"):
        log_mel_features([np.array([0.0, np.nan] * 200, np.float32)])
    with pytest.raises(AudioInputError, match="too short"):
        log_mel_features([np.zeros(150, np.float32)])
