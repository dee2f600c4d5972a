"""Real audio devices (PulseAudio null sinks): the duplex loop keeps real time, frame for frame."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from moshi_mlx.audio.conversation import FrameResult
from moshi_mlx.audio.devices import open_streams
from moshi_mlx.audio.duplex import DuplexLoop
from moshi_mlx.audio.io import read_audio
import pulse_devices
from pulse_devices import PulseServer, play_into_microphone, record_speaker

pulse_server = pulse_devices.pulse_server  # the session's private PulseAudio (a fixture)
pytestmark = [pytest.mark.audio, pytest.mark.usefixtures("pulse_server")]
SPEECH = str(Path(__file__).resolve().parent / "assets" / "speech_24k.wav")


class Echo:
    """Sends each input frame back one frame later."""

    def __init__(self):
        self.prev = None

    def step(self, frame):
        out, self.prev = self.prev, frame
        return FrameResult("", None, out)


def test_duplex_loop_on_real_devices(tmp_path):
    speech = read_audio(SPEECH)
    loop = DuplexLoop(Echo())
    recorder = record_speaker(tmp_path / "out.raw")
    start = time.perf_counter()
    loop.start()
    with open_streams(loop):
        time.sleep(0.5)
        play_into_microphone(SPEECH)
        time.sleep(1.0)
    loop.stop()  # after the devices closed, so the frame accounting is final
    elapsed = time.perf_counter() - start
    recorder.terminate()
    recorder.wait()
    s = loop.stats
    expected = elapsed * 12.5
    # Device start-up and buffering ('high' latency) cost a few frames; clock jitter a few more.
    assert 0.8 * expected <= s.frames_in <= expected + 2, (s.summary(), expected)
    assert s.frames_processed + s.frames_dropped_in + s.frames_pending == s.frames_in
    assert s.frames_out >= s.frames_processed - 1 - 1
    recorded = np.fromfile(tmp_path / "out.raw", dtype=np.float32)
    # The speech came back out of the speaker. An underrun inserts silence and shifts what
    # follows, so align each 0.4 s window of speech separately by cross-correlation.
    corrs = [best_correlation(recorded, speech[a : a + 9600]) for a in range(0, len(speech) - 9600, 9600)]
    corrs = [c for c in corrs if c is not None]
    print(s.summary(), np.round(corrs, 3))
    assert len(corrs) >= 3 and np.median(corrs) > 0.9, (corrs, s.summary())


def best_correlation(recorded: np.ndarray, window: np.ndarray) -> float | None:
    """Normalised correlation of `window` with its best-matching place in `recorded`."""
    if np.linalg.norm(window) < 1e-3 * len(window) ** 0.5:
        return None  # a silent stretch says nothing
    size = 1 << int(np.ceil(np.log2(len(recorded) + len(window))))
    scores = np.fft.irfft(np.fft.rfft(recorded, size) * np.conj(np.fft.rfft(window, size)), size)
    lag = int(np.argmax(scores[: len(recorded) - len(window) + 1]))
    seg = recorded[lag : lag + len(window)]
    return float(np.dot(seg, window) / (np.linalg.norm(seg) * np.linalg.norm(window) + 1e-9))


def test_chat_with_tiny_moshi_on_real_devices(tmp_path):
    """`moshi-mlx chat`'s loop end to end: a tiny random Moshi hears speech and answers aloud."""
    from moshi_mlx.audio.chat import chat
    from moshi_mlx.audio.conversation import Conversation
    from moshi_mlx.sampling import SamplingParams
    from tiny_model import tiny_model_dir

    conversation = Conversation.from_pretrained(tiny_model_dir(), "rust", sampling=SamplingParams(seed=0))
    recorder = record_speaker(tmp_path / "out.raw")
    import threading

    player = threading.Timer(1.0, play_into_microphone, args=(SPEECH,))
    player.start()
    duration = 6.0
    stats = chat(conversation, duration=duration, out=open(tmp_path / "text.txt", "w"))
    player.join()
    recorder.terminate()
    recorder.wait()
    print(stats.summary())
    # Input arrives at 12.5 frames/s while the devices are open, less what the 'high' latency
    # device buffer still holds when they close, and less what ALSA->PulseAudio loses when the
    # model saturates both cores of a small CI box (measured: 56-66 of 75 frames in 6 s).
    expected = stats.seconds * 12.5
    assert stats.seconds >= duration - 1.0
    assert 0.6 * expected <= stats.frames_in <= expected + 2, stats.summary()
    # Every frame that arrived was processed, dropped because the model was behind, or still
    # queued when the loop stopped.
    assert stats.frames_processed + stats.frames_dropped_in + stats.frames_pending == stats.frames_in
    assert stats.frames_pending <= 6  # the backlog bound (3) plus what arrives during one slow step
    assert stats.frames_processed >= 10 and stats.frames_out == stats.frames_processed - 1
    recorded = np.fromfile(tmp_path / "out.raw", dtype=np.float32)
    assert np.abs(recorded).max() > 1e-3, "nothing came out of the speaker"


def test_private_pulse_server_stops_and_leaves_nothing(tmp_path):
    """What the audio tests start, they stop: a second private server answers, then is gone."""
    server = PulseServer(tmp_path)
    server.start()
    try:
        assert server.answers()
        sinks = subprocess.run(["pactl", "list", "short", "sinks"], env=server.env(), capture_output=True, text=True)
        assert "vmic" in sinks.stdout and "vspk" in sinks.stdout and f"{pulse_devices.RATE}Hz" in sinks.stdout
    finally:
        server.stop()
    assert server.process.returncode is not None
    assert server.leftovers() == []
    assert not server.answers()


def test_list_devices_marks_inputs_outputs_and_defaults():
    done = subprocess.run(
        [sys.executable, "-m", "moshi_mlx.cli.main", "chat", "--list-devices"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines and done.stderr == ""
    # PortAudio sees PulseAudio through ALSA's "pulse" and "default" devices, both directions.
    assert any("input + output" in line for line in lines), done.stdout
    assert sum("default input" in line for line in lines) == 1, done.stdout
    assert sum("default output" in line for line in lines) == 1, done.stdout
