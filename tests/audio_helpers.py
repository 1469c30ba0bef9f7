"""Shared helpers for the audio tests: test signals, audio files in several formats, the HF references."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from omni_jax.processing.assets import PREPROCESSOR_FILE

# How Qwen3OmniMoeProcessor calls its WhisperFeatureExtractor (processing_qwen3_omni_moe.py, audio_kwargs).
HF_AUDIO_KWARGS = dict(sampling_rate=16000, padding=True, truncation=False, return_attention_mask=True)
FORMATS = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS", "mp3": "MPEG_LAYER_III"}
RATES = (8000, 22050, 44100, 48000)


def hf_feature_extractor():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(**json.loads(Path(PREPROCESSOR_FILE).read_text()))


def hf_features(waveforms) -> tuple[np.ndarray, np.ndarray]:
    out = hf_feature_extractor()(list(waveforms), **HF_AUDIO_KWARGS)
    return np.asarray(out["input_features"]), np.asarray(out["attention_mask"])


def chirp_and_noise(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """A deterministic, speech-like-band test signal: a 100 Hz -> 4 kHz chirp, a tone burst, and noise."""
    t = np.arange(int(seconds * rate)) / rate
    f0, f1 = 100.0, 4000.0
    chirp = 0.4 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t ** 2))
    burst = 0.3 * np.sin(2 * np.pi * 440.0 * t) * ((t % 0.5) < 0.2)
    noise = 0.02 * np.random.default_rng(seed).standard_normal(t.shape)
    return (chirp + burst + noise).astype(np.float32)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


SPEECH_TEXT = "The quick brown fox jumps over the lazy dog. Audio in, three seconds."


def espeak_speech(out_wav: Path, text: str = SPEECH_TEXT) -> Path:
    """Synthesise speech with espeak-ng (22.05 kHz mono wav)."""
    subprocess.run(["espeak-ng", "-w", str(out_wav), text], check=True, capture_output=True, timeout=60)
    return out_wav


def write_variants(signal: np.ndarray, rate: int, out_dir: Path, stem: str) -> list[Path]:
    """``signal`` (mono at ``rate``) resampled to each of RATES, mono and stereo, written in each of FORMATS."""
    import soundfile as sf
    import soxr

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for target in RATES:
        mono = signal if target == rate else soxr.resample(signal, rate, target).astype(np.float32)
        stereo = np.stack([mono, 0.5 * np.roll(mono, 37)], axis=1)  # distinct channels: a real downmix
        for ext, subtype in FORMATS.items():
            for layout, data in (("mono", mono), ("stereo", stereo)):
                path = out_dir / f"{stem}_{target}_{layout}.{ext}"
                sf.write(str(path), data, target, subtype=subtype)
                paths.append(path)
    return paths


# ------------------------------------------------------------------------------------ audio encoder


def build_hf_audio_encoder(seed: int = 0, audio_overrides: dict | None = None):
    """The tiny fixture's HF audio tower alone (fp32, eager), parameters drawn as hf_fixtures draws them.

    Building the whole tiny omni model takes ~13 s here; the tower alone is instant. Scales come from
    hf_fixtures._scale_for applied to the in-model names (``thinker.model.audio_tower.*``).
    """
    import torch
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

    from hf_fixtures import hf_config, randomize_, tiny_config_dict

    cfg = hf_config(tiny_config_dict({"audio": audio_overrides or {}})).thinker_config.audio_config
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    enc = Qwen3OmniMoeAudioEncoder(cfg)
    randomize_(enc, seed, prefix="thinker.model.audio_tower.")
    return enc.eval()


def hf_get_audio_features(encoder, input_features: np.ndarray, feature_attention_mask: np.ndarray, dtype=None):
    """What ``ThinkerModel.get_audio_features`` does with a padded batch and its mask -> (sum tokens, D) numpy."""
    import torch

    feats = torch.from_numpy(np.asarray(input_features, np.float32))
    mask = torch.from_numpy(np.asarray(feature_attention_mask)).long()
    if dtype is not None:
        feats = feats.to(dtype)
    lens = torch.sum(mask, dim=1)
    flat = feats.permute(0, 2, 1)[mask.bool()].permute(1, 0)
    with torch.no_grad():
        out = encoder(flat, feature_lens=lens, return_dict=True).last_hidden_state
    return out.float().numpy()


def fill_from_hf(params: dict, hf_tensors: dict[str, np.ndarray], rules) -> dict:
    """A copy of the nested param dict ``params`` filled from HF tensors (relative names) with ``rules``.

    Every HF tensor must match exactly one rule; returns the filled nested dict of numpy arrays.
    """
    import jax

    out = jax.tree.map(lambda a: np.array(a, dtype=np.float32), params)
    for name, tensor in hf_tensors.items():
        hits = [(r, r.match(name)) for r in rules]
        hits = [(r, idx) for r, idx in hits if idx is not None]
        if len(hits) != 1:
            raise KeyError(f"{name}: matched {len(hits)} rules")
        rule, idx = hits[0]
        node = out
        *parents, leaf = rule.param.split(".")
        for key in parents:
            node = node[key]
        slot = node[leaf]
        value = rule.to_param(np.asarray(tensor, np.float32))
        if rule.part is None:
            slot[idx] = value
        else:
            k, n = rule.part
            size = slot.shape[-1] // n
            slot[idx][..., k * size:(k + 1) * size] = value
    return out
