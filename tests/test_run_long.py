"""`moshi-mlx run` over 7 minutes of audio (past rustymimi's 4,096-frame rotary table) with both Mimi
backends: it completes, the answer is as long as the input (rounded up to whole frames) and the
peak RSS stays within 10 % of a 1-minute run's.

Slow: the tiny model carries a full-size Mimi, about 6,000 frames per backend at ~0.1-0.25 s each
here (2 CPU cores). The subprocesses get OpenBLAS preloaded when the Debian library exists, because
the MLX Mimi's fp32 matrix products are ~3.5x faster with it on Linux CPUs (README "Benchmarks").
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tiny_model import tiny_model_dir

from moshi_mlx.audio.io import read_audio, write_wav
from moshi_mlx.models.codec import rust_available

SPEECH = Path(__file__).resolve().parent / "assets" / "speech_24k.wav"
OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"


def speech_and_silence(path: Path, seconds: float) -> Path:
    """Speech (7.68 s) and silence (2.32 s) alternating for `seconds`."""
    speech = read_audio(SPEECH)
    block = np.concatenate([speech, np.zeros(10 * 24000 - len(speech), np.float32)])
    n = int(seconds * 24000)
    return write_wav(path, np.tile(block, -(-n // len(block)))[:n])


@dataclass
class Measured:
    frames_in: int
    frames_out: int
    seconds: float
    max_rss_mb: float


def measure_run(question: Path, out: Path, backend: str, model: Path) -> Measured:
    """Runs `moshi-mlx run` in a subprocess; its own peak RSS comes from wait4."""
    env = dict(os.environ)
    if sys.platform == "linux" and os.path.exists(OPENBLAS):
        env["LD_PRELOAD"] = OPENBLAS
    cmd = [sys.executable, "-m", "moshi_mlx.cli.main", "run", str(question), str(out),
           "--model", str(model), "--mimi-backend", backend, "--seed", "0"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.returncode == 0, err
    with wave.open(str(question)) as w:
        frames_in = -(-w.getnframes() // 1920)
    with wave.open(str(out)) as w:
        assert w.getframerate() == 24000 and w.getnframes() % 1920 == 0
        frames_out = w.getnframes() // 1920
    rss = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux
    return Measured(frames_in, frames_out, seconds, rss)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["mlx", "rust"])
def test_seven_minutes_complete_in_flat_memory(backend, tmp_path):
    if backend == "rust" and not rust_available():
        pytest.skip("rustymimi is not installed")
    model = tiny_model_dir()
    one = measure_run(speech_and_silence(tmp_path / "1min.wav", 60), tmp_path / "1min_out.wav", backend, model)
    seven = measure_run(speech_and_silence(tmp_path / "7min.wav", 421.0), tmp_path / "7min_out.wav", backend, model)
    print(f"\n{backend}: 1 min {one}\n{backend}: 7 min {seven}")
    assert one.frames_out == one.frames_in == 750
    assert seven.frames_out == seven.frames_in == 5263  # >= 5,250 frames, past frame 4,096
    assert seven.max_rss_mb <= 1.10 * one.max_rss_mb, (one, seven)
