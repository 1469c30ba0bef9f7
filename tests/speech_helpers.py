"""Shared checks of the speech parity tests (tests/generation/test_speech*.py)."""

import numpy as np


def strip_after_eos(ids, eos):
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def compare_wavs(ours, ref, label):
    """Waveform parity: correlation >= 0.999 and at most 0.1 % of samples off by more than 1e-4 (the tiny
    Code2Wav clamps to +-1, so a pre-clip value that rounds across zero flips a single sample by 2)."""
    assert ours.shape == ref.shape and ours.dtype == np.float32
    diff = np.abs(ours - ref)
    corr = float(np.corrcoef(ours, ref)[0, 1])
    print(f"{label}: {ref.size} samples, corr {corr:.6f}, max abs diff {diff.max():.2e}, "
          f"samples off by > 1e-4: {(diff > 1e-4).sum()}")
    assert corr >= 0.999 and (diff > 1e-4).mean() <= 1e-3
