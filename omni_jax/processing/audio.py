"""Audio input: decode a file to 16 kHz mono, and the 128-bin Whisper log-mel features the audio encoder reads.

Loading follows the reference pipeline (transformers' ``load_audio(backend="soundfile")``,
identical to ``librosa.load(path, sr=16000)``): decode with soundfile as float32, average the channels,
resample with soxr's ``soxr_hq`` and pad/trim to ``ceil(n * 16000 / rate)`` samples. soundfile
(libsndfile >= 1.1) decodes wav, flac, ogg/vorbis/opus and mp3.

Features follow ``WhisperFeatureExtractor`` as ``Qwen3OmniMoeProcessor`` calls it:
``padding=True`` (right-pad with zeros to the longest waveform of the batch), ``truncation=False`` (no
limit: a 10-minute clip gives 60,000 frames; ``n_samples``/``nb_max_frames`` of the preprocessor config are
not applied), ``return_attention_mask=True``. Per waveform of the padded batch: centred STFT (reflect pad
n_fft/2, periodic Hann, n_fft 400, hop 160), drop the last frame, power, slaney mel 0-8000 Hz,
``log10(max(mel, 1e-10))``, floor at the example's maximum - 8 (the maximum over the *padded* row, as the
reference does), ``(x + 4) / 4``. Frames near the end of a shorter audio see the batch's zero padding, not a
reflection, exactly as in the reference. ``feature_attention_mask`` is the sample mask strided by the hop
(its last entry dropped when the padded length is not a multiple of the hop), so a shorter audio of ``n``
samples has ``ceil(n / 160)`` valid frames and the longest has ``floor(n / 160)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from omni_jax.errors import InputFileError
from omni_jax.processing.assets import PREPROCESSOR_FILE

SAMPLE_RATE = 16000


class AudioInputError(InputFileError):
    """An audio input that cannot be used: unreadable, corrupt, empty, unsupported format, too short."""


@dataclass(frozen=True)
class AudioFeatureConfig:
    """The audio part of the checkpoint's preprocessor_config.json (WhisperFeatureExtractor)."""

    feature_size: int = 128
    sampling_rate: int = SAMPLE_RATE
    hop_length: int = 160
    n_fft: int = 400
    padding_value: float = 0.0
    dither: float = 0.0
    min_frequency: float = 0.0
    max_frequency: float = 8000.0

    def __post_init__(self):
        if self.dither != 0.0:
            raise ValueError(f"dither={self.dither}: only dither 0.0 (deterministic features) is supported")
        if self.padding_value != 0.0:
            raise ValueError(f"padding_value={self.padding_value}: the reference pads with 0.0")

    @classmethod
    def from_dict(cls, d: dict) -> "AudioFeatureConfig":
        b = cls()
        return cls(
            feature_size=int(d.get("feature_size", b.feature_size)),
            sampling_rate=int(d.get("sampling_rate", b.sampling_rate)),
            hop_length=int(d.get("hop_length", b.hop_length)),
            n_fft=int(d.get("n_fft", b.n_fft)),
            padding_value=float(d.get("padding_value", b.padding_value)),
            dither=float(d.get("dither", b.dither)),
        )

    @classmethod
    def from_file(cls, path: str | Path = PREPROCESSOR_FILE) -> "AudioFeatureConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "preprocessor_config.json"
        return cls.from_dict(json.loads(path.read_text()))


@dataclass(frozen=True)
class AudioFeatures:
    """A padded batch of log-mel features, as the processor returns them."""

    input_features: np.ndarray  # (B, feature_size, T) float32
    feature_attention_mask: np.ndarray  # (B, T) int32

    @property
    def frame_counts(self) -> np.ndarray:
        """Valid frames per audio, (B,) int64: what the encoder takes."""
        return self.feature_attention_mask.sum(-1).astype(np.int64)


# ----------------------------------------------------------------------------------------------- loading


def load_audio(path: str | Path, sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` to a mono float32 waveform at ``sampling_rate`` (what ``librosa.load(path, sr)`` gives).

    Raises AudioInputError (one line, naming the file) for a missing, empty, corrupt or unsupported file,
    a file without samples, non-finite samples, or a clip too short to featurise.
    """
    import soundfile as sf
    import soxr

    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"{path}: no such audio file")
    if path.stat().st_size == 0:
        raise AudioInputError(f"{path}: empty file")
    try:
        with sf.SoundFile(str(path)) as f:
            rate = f.samplerate
            waveform = _read_all(f, path.stat().st_size).T  # (channels, n)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        detail = " ".join(str(getattr(e, "error_string", e)).split())
        raise AudioInputError(
            f"{path}: cannot decode audio: unsupported format or corrupt file (libsndfile: {detail})") from None
    if waveform.shape[1] == 0:
        raise AudioInputError(f"{path}: the file holds no audio samples")
    if not np.all(np.isfinite(waveform)):
        raise AudioInputError(f"{path}: the audio holds non-finite samples")
    waveform = waveform.mean(axis=0) if waveform.shape[0] > 1 else waveform[0]
    if rate != sampling_rate:
        num_samples = math.ceil(waveform.shape[-1] * sampling_rate / rate)
        waveform = soxr.resample(waveform, rate, sampling_rate, quality="soxr_hq")
        waveform = np.pad(waveform, (0, max(0, num_samples - len(waveform))))[:num_samples]
    waveform = np.ascontiguousarray(waveform, dtype=np.float32)
    min_len = min_samples(AudioFeatureConfig())
    if len(waveform) < min_len:
        raise AudioInputError(
            f"{path}: audio too short ({len(waveform)} samples at {sampling_rate} Hz; at least {min_len} needed)"
        )
    return waveform


# No codec stores more samples per byte than this (FLAC of digital silence: a few hundred).
MAX_SAMPLES_PER_BYTE = 20_000


def _read_all(f, file_bytes: int) -> np.ndarray:
    """Every frame of an open SoundFile as float32 [n, channels].

    One ``f.read()`` as the reference does (the decoders' output can depend on the read size), unless the
    header claims more samples than the file's size can hold: ``f.read()`` would then first allocate that
    claim, which a damaged header can put at terabytes, so the frames are read in blocks until the decoder
    has no more.
    """
    if f.frames * f.channels <= MAX_SAMPLES_PER_BYTE * max(file_bytes, 1):
        return f.read(dtype="float32", always_2d=True)
    return _read_blocks(f)


def _read_blocks(f, block: int = 1 << 16) -> np.ndarray:
    """Every frame of an open SoundFile as float32 [n, channels], read block by block until the data ends."""
    blocks = []
    while True:
        b = f.read(block, dtype="float32", always_2d=True)
        if len(b) == 0:
            break
        blocks.append(b)
        if len(b) < block:
            break
    if not blocks:
        return np.zeros((0, f.channels), np.float32)
    return np.concatenate(blocks, axis=0)


def min_samples(cfg: AudioFeatureConfig) -> int:
    """The shortest padded batch the reference can featurise (its reflect pad needs n_fft/2 + 1 samples)."""
    return cfg.n_fft // 2 + 1


# ---------------------------------------------------------------------------------------------- features


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    f = np.asarray(f, np.float64)
    linear = f / (200.0 / 3.0)
    logstep = np.log(6.4) / 27.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / logstep, linear)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), (200.0 / 3.0) * m)


def mel_filters(cfg: AudioFeatureConfig) -> np.ndarray:
    """(n_fft/2 + 1, feature_size) float64 slaney-scale, slaney-normalised triangular filters.

    Equal to HF's ``mel_filter_bank(..., norm="slaney", mel_scale="slaney")`` and librosa's to ~1e-16.
    """
    fft_freqs = np.linspace(0.0, cfg.sampling_rate / 2, 1 + cfg.n_fft // 2)
    mel_edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.min_frequency), _hz_to_mel(cfg.max_frequency),
                                       cfg.feature_size + 2))
    widths = np.diff(mel_edges)
    ramps = mel_edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_edges[2:] - mel_edges[:-2]))[:, None]
    return np.ascontiguousarray(weights.T)


def periodic_hann(n: int) -> np.ndarray:
    """torch.hann_window(n) (periodic)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def log_mel(waveform: np.ndarray, cfg: AudioFeatureConfig, filters: np.ndarray | None = None) -> np.ndarray:
    """(feature_size, len // hop) float32 log-mel of one (already padded) waveform."""
    filters = mel_filters(cfg) if filters is None else filters
    half = cfg.n_fft // 2
    x = np.pad(np.asarray(waveform, np.float64), (half, half), mode="reflect")
    n_frames = 1 + (len(x) - cfg.n_fft) // cfg.hop_length
    frames = np.lib.stride_tricks.sliding_window_view(x, cfg.n_fft)[:: cfg.hop_length][:n_frames]
    frames = frames[:-1]  # the reference drops the last STFT frame
    power = np.abs(np.fft.rfft(frames * periodic_hann(cfg.n_fft), axis=-1)) ** 2  # (T, n_fft/2 + 1)
    mel = power @ filters  # (T, feature_size)
    logm = np.log10(np.maximum(mel, 1e-10))
    logm = np.maximum(logm, logm.max() - 8.0)
    return ((logm + 4.0) / 4.0).T.astype(np.float32)


def log_mel_features(waveforms: Sequence[np.ndarray] | np.ndarray, cfg: AudioFeatureConfig | None = None
                     ) -> AudioFeatures:
    """The processor's audio features for a batch of 16 kHz mono waveforms (padding=True, truncation=False)."""
    cfg = cfg or AudioFeatureConfig()
    if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
        waveforms = [waveforms]
    waves = []
    for i, w in enumerate(waveforms):
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 1:
            raise AudioInputError(f"audio {i}: expected a mono waveform (1-D), got shape {w.shape}")
        if w.size == 0:
            raise AudioInputError(f"audio {i}: empty waveform")
        if not np.all(np.isfinite(w)):
            raise AudioInputError(f"audio {i}: the waveform holds non-finite samples")
        waves.append(w)
    if not waves:
        raise AudioInputError("no audio given")
    longest = max(len(w) for w in waves)
    if longest < min_samples(cfg):
        raise AudioInputError(
            f"audio too short: the longest clip has {longest} samples at {cfg.sampling_rate} Hz "
            f"(at least {min_samples(cfg)} needed)"
        )
    padded = np.zeros((len(waves), longest), np.float32)
    sample_mask = np.zeros((len(waves), longest), np.int32)
    for i, w in enumerate(waves):
        padded[i, : len(w)] = w
        sample_mask[i, : len(w)] = 1
    filters = mel_filters(cfg)
    features = np.stack([log_mel(row, cfg, filters) for row in padded])
    frame_mask = sample_mask[:, :: cfg.hop_length]
    if longest % cfg.hop_length:
        frame_mask = frame_mask[:, :-1]
    return AudioFeatures(input_features=features, feature_attention_mask=np.ascontiguousarray(frame_mask))


def load_features(paths: Sequence[str | Path], cfg: AudioFeatureConfig | None = None) -> AudioFeatures:
    """Load audio files and featurise them as one padded batch."""
    cfg = cfg or AudioFeatureConfig()
    return log_mel_features([load_audio(p, cfg.sampling_rate) for p in paths], cfg)


def audio_token_counts(frame_counts, n_window: int = 50) -> np.ndarray:
    """Audio tokens (``<|audio_pad|>`` count) per audio: the reference's ``_get_feat_extract_output_lengths``.

    13 tokens per full ``2 * n_window``-frame chunk (hard-coded in the reference, right for n_window 50) plus
    ``ceil(ceil(ceil(r / 2) / 2) / 2)`` for the ``r``-frame remainder.
    """
    lengths = np.asarray(frame_counts, dtype=np.int64)
    chunk = 2 * n_window
    rest = lengths % chunk
    f = (rest - 1) // 2 + 1
    return ((f - 1) // 2 + 1 - 1) // 2 + 1 + (lengths // chunk) * 13
