"""Ctrl-C (SIGINT) sent to a real ``python -m omni_jax.generate`` while it streams speech: no file that looks
complete, an existing wav and router-statistics file untouched, the partial wav removed. (SIGTERM goes through
the same handler, ``omni_jax.atomic.install_interrupt_handlers``; it is sent to real runs of the experiment
runner and the converter in their tests.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import time


def test_interrupted_speech_leaves_existing_files(tiny_ckpt, tmp_path):
    wav, stats = tmp_path / "answer.wav", tmp_path / "stats.json"
    wav.write_bytes(b"RIFF an earlier answer")
    stats.write_text('{"earlier": true}')
    proc = subprocess.Popen(
        [sys.executable, "-m", "omni_jax.generate", "--checkpoint", str(tiny_ckpt), "--prompt", "Hello there",
         "--max-new-tokens", "4", "--greedy", "--max-speech-frames", "60", "--audio-chunk-frames", "1",
         "--wav-out", str(wav), "--router-stats", str(stats)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "answer.wav.partial"
    deadline = time.time() + 240
    while not partial.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"finished before speech streamed: {proc.stderr.read()[-2000:]}"
    time.sleep(0.2)  # a few pieces into the partial file
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "python -m omni_jax.generate: interrupted"
    assert wav.read_bytes() == b"RIFF an earlier answer" and stats.read_text() == '{"earlier": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answer.wav", "stats.json"]
