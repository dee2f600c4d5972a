"""`moshi-mlx chat`: devices checked before anything loads (one line, exit 2, what to do), the
device list, and a Ctrl-C / SIGTERM stop that reports the real listening time and every frame.

Without devices the CLI runs for real (PortAudio pointed at no sound server); device resolution
corner cases use a fake `sounddevice`; the real stop is an `audio` test on the private PulseAudio.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pulse_devices
from conftest import unavailable
from moshi_mlx.audio import chat as chat_module
from moshi_mlx.audio import devices
from moshi_mlx.audio.conversation import FrameResult
from moshi_mlx.audio.devices import AudioDeviceError, check_devices, list_devices, open_streams
from moshi_mlx.audio.duplex import DuplexLoop

CHAT = [sys.executable, "-m", "moshi_mlx.cli.main", "chat"]
pulse_server = pulse_devices.pulse_server  # the session's private PulseAudio (a fixture, audio tests only)


def run_without_devices(*args: str) -> subprocess.CompletedProcess:
    if sys.platform != "linux" or list(Path("/dev/snd").glob("pcmC*")):
        pytest.skip("needs a Linux machine without sound cards (PortAudio then sees only sound servers)")
    try:
        import sounddevice  # noqa: F401
    except OSError as e:
        unavailable("portaudio", f"PortAudio (libportaudio2) is not installed: {e}")
    return subprocess.run(
        [*CHAT, *args], env=pulse_devices.no_device_env(), capture_output=True, text=True, timeout=120
    )


def test_chat_without_devices_says_what_to_do_before_loading_the_model():
    # A model path that does not exist: the device error must come first (nothing was loaded).
    done = run_without_devices("--model", "/nonexistent/moshi-model")
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("moshi-mlx chat: error: no input device (microphone) found"), lines[0]
    assert "--list-devices" in lines[0] and "--input-device" in lines[0]


def test_list_devices_without_devices():
    done = run_without_devices("--list-devices")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "moshi-mlx chat: error: no audio devices found (PortAudio sees none: connect one, or start a sound "
        "server such as PulseAudio or PipeWire)"
    ]


def test_a_bad_duration_is_refused():
    done = subprocess.run([*CHAT, "--duration", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--duration must be a positive number" in done.stderr


# Device resolution with a fake sounddevice ----------------------------------------------------------


class FakePortAudioError(Exception):
    pass


class FakeSd:
    """The parts of `sounddevice` that `devices` uses, over a given device table."""

    PortAudioError = FakePortAudioError

    def __init__(self, table: list[tuple[str, int, int]], default=(-1, -1), rates=(24000, 48000)):
        self.table = [
            dict(name=n, index=i, hostapi=0, max_input_channels=a, max_output_channels=b)
            for i, (n, a, b) in enumerate(table)
        ]
        self.default = type("Default", (), {"device": list(default)})()
        self.rates = rates

    def query_hostapis(self):
        return [{"name": "ALSA"}]

    def query_devices(self, device=None, kind=None):
        if device is None:
            return list(self.table)
        if isinstance(device, int):
            if not 0 <= device < len(self.table):
                raise FakePortAudioError(f"Error querying device {device}")
            info = self.table[device]
        else:
            found = [d for d in self.table if device.lower() in d["name"].lower()]
            if kind:
                found = [d for d in found if d[f"max_{kind}_channels"] > 0]
            if not found:
                raise ValueError(f"No {kind or 'input/output'} device matching {device!r}")
            info = found[0]
        if kind and info[f"max_{kind}_channels"] < 1:
            raise ValueError(f"Not an {kind} device: {info['name']!r}")
        return info

    def _check(self, device, channels, dtype, samplerate):
        if samplerate not in self.rates:
            raise FakePortAudioError("Invalid sample rate [PaErrorCode -9997]")

    check_input_settings = check_output_settings = _check

    def InputStream(self, **kwargs):
        raise FakePortAudioError("Device unavailable [PaErrorCode -9985]")


@pytest.fixture
def fake_sd(monkeypatch):
    def install(*args, **kwargs) -> FakeSd:
        sd = FakeSd(*args, **kwargs)
        monkeypatch.setattr(devices, "_sounddevice", lambda: sd)
        return sd

    return install


def test_devices_resolve_to_the_defaults_or_the_named_ones(fake_sd):
    fake_sd([("USB mic", 1, 0), ("HDMI", 0, 2), ("pulse", 32, 32)], default=(2, 2))
    assert check_devices() == (2, 2)
    assert check_devices("usb", "hdmi") == (0, 1)
    assert check_devices(0, 1) == (0, 1)
    listing = list_devices().splitlines()
    assert listing == [
        "  0  USB mic (ALSA): input (1 in, 0 out)",
        "  1  HDMI (ALSA): output (0 in, 2 out)",
        "  2  pulse (ALSA): input + output (32 in, 32 out)  <- default input, default output",
    ]


@pytest.mark.parametrize(
    "table,default,inp,out,message",
    [
        ([], (-1, -1), None, None, "no input device (microphone) found: PortAudio sees no audio devices"),
        ([("HDMI", 0, 2)], (-1, 0), None, None, "no input device (microphone) found among 1 audio devices"),
        ([("USB mic", 1, 0)], (0, -1), None, None, "no output device (speaker) found among 1 audio devices"),
        ([("USB mic", 1, 0), ("HDMI", 0, 2)], (-1, 1), None, None, "no default input device (microphone)"),
        ([("pulse", 2, 2)], (0, 0), "usb", None, "input device 'usb': No input device matching 'usb'"),
        ([("HDMI", 0, 2)], (-1, 0), 0, None, "input device 0: Not an input device: 'HDMI'"),
        ([("pulse", 2, 2)], (0, 0), None, 7, "output device 7: Error querying device 7"),
    ],
)
def test_unusable_devices_give_one_line_saying_what_to_do(fake_sd, table, default, inp, out, message):
    fake_sd(table, default)
    with pytest.raises(AudioDeviceError) as info:
        check_devices(inp, out)
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text, text
    assert "--list-devices" in text


def test_device_errors_keep_their_cause(fake_sd):
    fake_sd([("pulse", 2, 2)], default=(0, 0), rates=(48000,))
    with pytest.raises(AudioDeviceError, match="refuses mono float32 at 24000 Hz: Invalid sample rate") as info:
        check_devices()
    assert isinstance(info.value.__cause__, FakePortAudioError)
    fake_sd([("pulse", 2, 2)], default=(0, 0))
    with pytest.raises(AudioDeviceError, match="cannot open audio devices 0 .input. and 0 .output.") as info:
        with open_streams(DuplexLoop(None)):
            pass
    assert isinstance(info.value.__cause__, FakePortAudioError)
    with pytest.raises(AudioDeviceError, match="no audio devices found"):
        fake_sd([])
        list_devices()


# chat() stopped by Ctrl-C, with devices simulated ---------------------------------------------------


class SlowEcho:
    """A Conversation stand-in that takes `step_s` per frame (slower than real time: frames drop)."""

    frame_size = 1920

    def __init__(self, step_s: float):
        self.step_s = step_s

    def materialize(self) -> None:
        pass

    def warmup(self) -> None:
        pass

    def step(self, frame):
        time.sleep(self.step_s)
        return FrameResult("", None, frame)


def test_ctrl_c_in_chat_reports_the_listening_time_and_every_frame(monkeypatch):
    @contextlib.contextmanager
    def fake_streams(loop, input_device=None, output_device=None):
        """A microphone delivering 512-sample blocks 4x faster than real time."""
        stop = threading.Event()

        def feed():
            while not stop.is_set():
                loop.push_input(np.zeros(512, np.float32))
                loop.pull_output(512)
                time.sleep(512 / 24000 / 4)

        thread = threading.Thread(target=feed)
        thread.start()
        try:
            yield None, None
        finally:
            stop.set()
            thread.join()

    monkeypatch.setattr(chat_module, "open_streams", fake_streams)
    listening = []
    deadline = []

    def ctrl_c_after_a_second() -> bool:
        if time.monotonic() > deadline[0]:
            raise KeyboardInterrupt
        return False

    def on_listening() -> None:
        listening.append(time.monotonic())
        deadline.append(time.monotonic() + 1.0)

    stats = chat_module.chat(SlowEcho(0.06), out=io.StringIO(), should_stop=ctrl_c_after_a_second,
                             on_listening=on_listening)
    assert listening and stats.interrupted
    assert 1.0 <= stats.seconds < 5.0, stats.summary()
    assert stats.frames_in >= 20 and stats.frames_dropped_in > 0, stats.summary()
    assert stats.frames_processed + stats.frames_dropped_in + stats.frames_pending == stats.frames_in
    assert "(Ctrl-C)" in stats.summary()


# The real thing: SIGINT / SIGTERM to `moshi-mlx chat` on virtual devices ----------------------------

SUMMARY = re.compile(
    r"^(?P<seconds>[\d.]+) s(?: \(Ctrl-C\))?: frames in (?P<inp>\d+), processed (?P<processed>\d+), dropped "
    r"\(model behind\) (?P<dropped>\d+), pending at stop (?P<pending>\d+), out (?P<out>\d+),"
)


@pytest.mark.audio
@pytest.mark.usefixtures("pulse_server")
@pytest.mark.parametrize("sig,code,how", [(signal.SIGINT, 0, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_stops_chat_with_real_stats(sig, code, how):
    from moshi_mlx.models.codec import default_backend
    from tiny_model import tiny_model_dir

    cmd = [*CHAT, "--model", str(tiny_model_dir()), "--mimi-backend", default_backend(), "--seed", "0",
           "--duration", "300", "--stats"]
    # PYTHONFAULTHANDLER: a chat that does not exit is aborted and prints every thread's stack.
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(300, proc.kill)  # never hang the suite on a chat that does not start
    watchdog.start()
    try:
        first = proc.stderr.readline()  # blocks until the devices are open (or an error)
        assert first.startswith("Moshi is listening"), first + proc.stderr.read()
        time.sleep(5.0)
        proc.send_signal(sig)
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            pytest.fail(f"chat did not exit within 120 s of {how}; its threads:\n{proc.communicate(timeout=60)[1]}")
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = stderr.strip().splitlines()
    assert proc.returncode == code and "Traceback" not in stderr, stderr
    assert len(lines) == 2 and lines[0].startswith(f"Stopped ({how}) after "), stderr
    m = SUMMARY.match(lines[1])
    assert m, lines[1]
    seconds, n = float(m["seconds"]), {k: int(v) for k, v in m.groupdict().items() if k != "seconds"}
    assert 4.5 <= seconds <= 30, lines[1]  # listening time, not 0.0
    assert lines[0] == f"Stopped ({how}) after {m['seconds']} s of listening."
    # Input arrives at 12.5 frames/s while the devices are open, less the input stream's start-up and
    # what ALSA->PulseAudio loses on a saturated 2-core box (measured: 57 % of the frames in 4 s with
    # load 8; see also test_audio_devices).
    assert 0.5 * seconds * 12.5 <= n["inp"] <= seconds * 12.5 + 2, lines[1]
    assert n["processed"] + n["dropped"] + n["pending"] == n["inp"], lines[1]
    # The tiny model answers from its second frame on (its acoustic delay is one frame).
    assert n["processed"] >= 1 and n["out"] == n["processed"] - 1, lines[1]
