"""`moshi-mlx run` over 7 minutes of audio (past rustymimi's 4,096-frame rotary table) with both Mimi
backends: it completes, the answer is as long as the input (rounded up to whole frames) and the
peak RSS at the end stays within 10 % of the peak after the first minute of the same run.

The answer wav grows frame by frame at its final path, so the first minute of a 7-minute run is
exactly a 1-minute run: its peak (the subprocess's VmHWM, read when the answer holds 750 frames)
is the 1-minute baseline, without paying for a second run. The end peak is VmHWM polled until the
process exits (wait4's ru_maxrss is no use here: on Linux it counts the forking pytest process's
pages, ~430 MB, before the exec).

Slow. Sized for CI on 2 cores: the mlx case uses `make-tiny`'s small Mimi (~20 ms per frame here);
the rust case needs the published Mimi architecture (the torch-fitted fixture, ~0.15-0.2 s per
frame in rustymimi: about 15-20 minutes for 5,263 frames).
"""

from __future__ import annotations

import subprocess
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from moshi_mlx.audio.io import read_audio, write_wav
from moshi_mlx.weights.tiny import make_tiny_model

SPEECH = Path(__file__).resolve().parent / "assets" / "speech_24k.wav"
FRAME = 1920
ONE_MINUTE = 750  # frames


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
    peak_mb_one_minute: float  # VmHWM once the answer held 750 frames
    peak_mb_end: float  # VmHWM last read before the process exited (polled every 0.2 s)


def _frames_written(path: Path) -> int:
    try:
        with wave.open(str(path)) as w:
            return w.getnframes() // FRAME
    except (OSError, EOFError, wave.Error):
        return 0


def _vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def measure_run(question: Path, out: Path, backend: str, model: Path) -> Measured:
    """Runs `moshi-mlx run` in a subprocess, watching its answer grow to read the 1-minute peak."""
    cmd = [sys.executable, "-m", "moshi_mlx.cli.main", "run", str(question), str(out),
           "--model", str(model), "--mimi-backend", backend, "--seed", "0"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    one_minute = peak = None
    while proc.poll() is None:
        try:
            peak = _vm_hwm_mb(proc.pid)
        except (OSError, StopIteration):  # exiting
            break
        if one_minute is None and _frames_written(out) >= ONE_MINUTE:
            one_minute = peak
        time.sleep(0.2)
    _, err = proc.communicate()
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, err.decode()
    assert one_minute is not None, "the answer never reached one minute while the run was going"
    with wave.open(str(question)) as w:
        frames_in = -(-w.getnframes() // FRAME)
    with wave.open(str(out)) as w:
        assert w.getframerate() == 24000 and w.getnframes() % FRAME == 0
        frames_out = w.getnframes() // FRAME
    return Measured(frames_in, frames_out, seconds, one_minute, peak)


def _model(backend: str, tmp_path: Path) -> Path:
    if backend == "mlx":
        return make_tiny_model(tmp_path / "tiny-small-mimi")
    require("rustymimi")
    from tiny_model import tiny_model_dir

    return tiny_model_dir()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc for the 1-minute peak")
@pytest.mark.parametrize("backend", ["mlx", "rust"])
def test_seven_minutes_complete_in_flat_memory(backend, tmp_path):
    model = _model(backend, tmp_path)
    m = measure_run(speech_and_silence(tmp_path / "7min.wav", 421.0), tmp_path / "7min_out.wav", backend, model)
    print(f"\n{backend}: {m}")
    assert m.frames_out == m.frames_in == 5263  # >= 5,250 frames, past frame 4,096
    assert m.peak_mb_end <= 1.10 * m.peak_mb_one_minute, m
