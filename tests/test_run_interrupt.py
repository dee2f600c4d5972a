"""`moshi-mlx run` stopped halfway by SIGINT (Ctrl-C) or SIGTERM: a valid, time-aligned partial wav,
the text so far, one line on stderr, exit 130 / 143. Also the progress bar on a terminal."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from tiny_model import tiny_model_dir

from moshi_mlx.audio.conversation import Conversation
from moshi_mlx.audio.io import read_audio, write_wav
from moshi_mlx.audio.run_file import FileRun
from moshi_mlx.models.codec import default_backend
from moshi_mlx.sampling import SamplingParams

SPEECH = Path(__file__).resolve().parent / "assets" / "speech_24k.wav"
SEED = 2


@pytest.fixture(scope="module")
def long_question(tmp_path_factory) -> Path:
    """Speech, a second of silence, speech again: 16.4 s, 205 frames."""
    speech = read_audio(SPEECH)
    pcm = np.concatenate([speech, np.zeros(24000, np.float32), speech])
    return write_wav(tmp_path_factory.mktemp("q") / "long.wav", pcm)


def wav_frames(path: Path) -> int:
    """Whole frames in a wav's header (0 while the file does not exist yet)."""
    try:
        with wave.open(str(path)) as w:
            assert w.getframerate() == 24000 and w.getnchannels() == 1 and w.getsampwidth() == 2
            return w.getnframes() // 1920
    except FileNotFoundError:
        return 0


def start_run(question: Path, out: Path, txt: Path, **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "moshi_mlx.cli.main", "run", str(question), str(out), "--text-out", str(txt),
           "--model", str(tiny_model_dir()), "--mimi-backend", default_backend(), "--seed", str(SEED)]
    return subprocess.Popen(cmd, text=True, **kwargs)


@pytest.mark.parametrize("sig,code,reason", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_halfway_leaves_a_valid_time_aligned_partial_answer(long_question, tmp_path, sig, code, reason):
    out, txt = tmp_path / "answer.wav", tmp_path / "answer.txt"
    proc = start_run(long_question, out, txt, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while wav_frames(out) < 12:  # watch the answer grow on disk, then stop the run
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    m = re.fullmatch(rf"moshi-mlx run: {reason} \(.*\) at frame (\d+) of 205 \(([\d.]+) s of 16\.40 s\); "
                     rf"{re.escape(str(out))} holds the answer's first (\d+) frames \(([\d.]+) s\), "
                     rf"{re.escape(str(txt))} the text so far\n", stderr)
    assert m, stderr
    steps, written = int(m[1]), int(m[3])
    assert 12 <= written == wav_frames(out) < 205 and steps == written + 1  # the tiny LM's max_delay is 1
    assert float(m[2]) == pytest.approx(steps * 0.08) and float(m[4]) == pytest.approx(written * 0.08)
    assert txt.read_text() == stdout  # the text so far, also printed, both ended by a newline

    # Time-aligned: frame i of the partial answer is the complete run's frame i (same seed, in-process).
    conv = Conversation.from_pretrained(tiny_model_dir(), default_backend(), sampling=SamplingParams(seed=SEED))
    job = FileRun(long_question, tmp_path / "reference.wav")
    job.run(conv, should_stop=lambda: "enough" if job.steps == steps else None)
    reference = read_audio(tmp_path / "reference.wav")
    assert len(reference) == written * 1920
    assert np.abs(read_audio(out) - reference).max() < 1e-3  # 16-bit files; rustymimi's fp32 sum order


def test_progress_bar_on_a_terminal_then_cleared(tmp_path):
    """stderr on a pseudo-terminal gets the bar (frames, RTF, ETA); the finished run clears it."""
    short = write_wav(tmp_path / "q.wav", read_audio(SPEECH)[: 30 * 1920])
    leader, follower = pty.openpty()
    proc = start_run(short, tmp_path / "a.wav", tmp_path / "a.txt", stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    proc.communicate(timeout=120)
    os.close(leader)
    assert proc.returncode == 0
    text = seen.decode()
    assert re.search(r"\[#*\.*\] \d+/30 frames · RTF \d+\.\d\d · ETA \d+:\d\d", text), text
    # The bar is cleared, and one line gives the run's real-time factor.
    assert re.search(r"\r\x1b\[Kmoshi-mlx run: 2\.40 s of audio answered in \d+\.\d\d s, RTF \d+\.\d\d\r?\n$", text), text
    assert wav_frames(tmp_path / "a.wav") == 30
