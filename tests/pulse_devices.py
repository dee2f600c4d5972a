"""Virtual audio devices for tests: a PulseAudio server with null sinks `vmic` (what we play into
the "microphone") and `vspk` (our "speaker", recorded through its monitor)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

RATE = 24_000


def _pactl(*args: str) -> str:
    return subprocess.run(["pactl", *args], check=True, capture_output=True, text=True).stdout


def start_virtual_devices() -> None:
    """Starts PulseAudio (if needed) with `vmic`/`vspk` as defaults, or skips the test."""
    for tool in ("pulseaudio", "pactl", "paplay", "parec"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (PulseAudio tests need pulseaudio and pulseaudio-utils)")
    if subprocess.run(["pulseaudio", "--check"]).returncode != 0:
        subprocess.run(["pulseaudio", "-D", "--exit-idle-time=-1"], capture_output=True)
        for _ in range(50):
            if subprocess.run(["pulseaudio", "--check"]).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.skip("pulseaudio would not start")
    sinks = _pactl("list", "short", "sinks")
    for name in ("vmic", "vspk"):
        if name not in sinks:
            _pactl("load-module", "module-null-sink", f"sink_name={name}", f"rate={RATE}", "channels=1")
    _pactl("set-default-source", "vmic.monitor")
    _pactl("set-default-sink", "vspk")
    try:
        import sounddevice as sd

        sd._terminate()
        sd._initialize()  # re-scan devices now that the server exists
    except OSError:
        pytest.skip("PortAudio (libportaudio2) is not installed")


def record_speaker(path) -> subprocess.Popen:
    """Starts recording the virtual speaker as raw float32 mono 24 kHz into `path`."""
    return subprocess.Popen(
        ["parec", "--device=vspk.monitor", f"--rate={RATE}", "--channels=1", "--format=float32le", "--raw"],
        stdout=open(path, "wb"),
    )


def play_into_microphone(wav_path) -> None:
    subprocess.run(["paplay", "--device=vmic", str(wav_path)], check=True)
