"""Microphone and speaker streams (sounddevice/PortAudio) wired to a `DuplexLoop`.

Separate input and output streams with `latency="high"` keep up with real time on jittery
back-ends (e.g. ALSA -> PulseAudio), where a single duplex stream does not.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from ..errors import MoshiError
from .duplex import DuplexLoop


class AudioDeviceError(MoshiError, OSError):
    """No usable audio device; the message says which one and why."""


def _sounddevice():
    try:
        import sounddevice as sd
    except OSError as e:  # PortAudio library missing
        raise AudioDeviceError(f"PortAudio is not available ({e}); install libportaudio2") from None
    return sd


def list_devices() -> str:
    """Human-readable list of audio devices."""
    return str(_sounddevice().query_devices())


@contextlib.contextmanager
def open_streams(
    loop: DuplexLoop,
    sample_rate: int = 24_000,
    input_device: int | str | None = None,
    output_device: int | str | None = None,
    latency: str | float = "high",
) -> Iterator[tuple[object, object]]:
    """Opens mono input/output streams at `sample_rate` feeding `loop`; closes them on exit."""
    sd = _sounddevice()

    def on_input(indata, frames, time_info, status) -> None:
        if status.input_overflow:
            loop.stats.device_overflows += 1
        loop.push_input(indata[:, 0].copy())

    def on_output(outdata, frames, time_info, status) -> None:
        if status.output_underflow:
            loop.stats.device_underflows += 1
        outdata[:, 0] = loop.pull_output(frames)

    try:
        instream = sd.InputStream(
            samplerate=sample_rate, channels=1, dtype="float32", device=input_device,
            latency=latency, callback=on_input,
        )
        outstream = sd.OutputStream(
            samplerate=sample_rate, channels=1, dtype="float32", device=output_device,
            latency=latency, callback=on_output,
        )
    except Exception as e:
        raise AudioDeviceError(f"cannot open audio devices at {sample_rate} Hz: {e}") from None
    with instream, outstream:
        yield instream, outstream
