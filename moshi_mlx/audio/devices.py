"""Microphone and speaker (sounddevice/PortAudio): listing, checking and opening them for a `DuplexLoop`.

`check_devices` resolves and validates both devices (they exist, have a channel in the needed
direction, accept 24 kHz mono float32) without opening them, so a command can refuse early, before
any model is loaded. Separate input and output streams with `latency="high"` keep up with real time
on jittery back-ends (e.g. ALSA -> PulseAudio), where a single duplex stream does not.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import MoshiError
from .duplex import DuplexLoop

SAMPLE_RATE = 24_000
NO_DEVICES_HINT = "connect one, or start a sound server such as PulseAudio or PipeWire"
HOW_TO_PICK = "list them with `moshi-mlx chat --list-devices`, pick one with --{kind}-device INDEX|NAME"


class AudioDeviceError(MoshiError, OSError):
    """No usable audio device; the message says which one, why, and what to do."""


@dataclass(frozen=True)
class Device:
    """One PortAudio device as listed to the user."""

    index: int
    name: str
    hostapi: str
    inputs: int  # max input channels (0: not a microphone)
    outputs: int  # max output channels (0: not a speaker)
    default_input: bool = False
    default_output: bool = False

    def describe(self) -> str:
        roles = [r for r, n in (("input", self.inputs), ("output", self.outputs)) if n]
        defaults = [d for d, on in (("default input", self.default_input), ("default output", self.default_output)) if on]
        mark = f"  <- {', '.join(defaults)}" if defaults else ""
        return (
            f"{self.index:>3}  {self.name} ({self.hostapi}): {' + '.join(roles) or 'no channels'}"
            f" ({self.inputs} in, {self.outputs} out){mark}"
        )


def _sounddevice() -> Any:
    try:
        import sounddevice as sd
    except OSError as e:  # PortAudio library missing
        raise AudioDeviceError(f"PortAudio is not available ({e}); install it (Debian/Ubuntu: libportaudio2)") from e
    _quiet_alsa()
    return sd


_alsa_handler: Any = None  # kept alive: ALSA holds a pointer to it


def _quiet_alsa() -> None:
    """Stops ALSA (Linux) printing "ALSA lib ... underrun occurred" and the like on stderr, in the
    middle of Moshi's text: the duplex stats count device over/underflows instead."""
    global _alsa_handler
    if _alsa_handler is not None or not sys.platform.startswith("linux"):
        return
    try:
        alsa = ctypes.CDLL(ctypes.util.find_library("asound") or "libasound.so.2")
    except OSError:
        return  # no ALSA: nothing prints
    handler_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)
    _alsa_handler = handler_type(lambda file, line, function, err, fmt: None)
    alsa.snd_lib_error_set_handler(_alsa_handler)


def query_devices() -> list[Device]:
    """Every audio device PortAudio sees (none without sound hardware or a sound server)."""
    sd = _sounddevice()
    hostapis = [h["name"] for h in sd.query_hostapis()]
    default_in, default_out = (int(d) for d in sd.default.device)
    return [
        Device(
            index=int(d["index"]), name=str(d["name"]), hostapi=hostapis[d["hostapi"]],
            inputs=int(d["max_input_channels"]), outputs=int(d["max_output_channels"]),
            default_input=d["index"] == default_in, default_output=d["index"] == default_out,
        )
        for d in sd.query_devices()
    ]


def list_devices() -> str:
    """The devices, one line each, marking inputs, outputs and the defaults.

    Raises `AudioDeviceError` when there are none: chat could not run either.
    """
    devices = query_devices()
    if not devices:
        raise AudioDeviceError(f"no audio devices found (PortAudio sees none: {NO_DEVICES_HINT})")
    return "\n".join(d.describe() for d in devices)


def _resolve(sd: Any, device: int | str | None, kind: str, sample_rate: int) -> int:
    """The index of the `kind` ("input"/"output") device to use, checked for mono float32 at `sample_rate`."""
    channels = "max_input_channels" if kind == "input" else "max_output_channels"
    what = "microphone" if kind == "input" else "speaker"
    if device is None:
        default = int(sd.default.device[0 if kind == "input" else 1])
        if default < 0:
            devices = sd.query_devices()
            if not devices:
                raise AudioDeviceError(
                    f"no {kind} device ({what}) found: PortAudio sees no audio devices ({NO_DEVICES_HINT}); "
                    f"{HOW_TO_PICK.format(kind=kind)}"
                )
            if not any(d[channels] > 0 for d in devices):
                raise AudioDeviceError(
                    f"no {kind} device ({what}) found among {len(devices)} audio devices; {HOW_TO_PICK.format(kind=kind)}"
                )
            raise AudioDeviceError(f"no default {kind} device ({what}); {HOW_TO_PICK.format(kind=kind)}")
        device = default
    try:
        info = sd.query_devices(device, kind)
    except (ValueError, sd.PortAudioError) as e:  # unknown index or name, ambiguous name, wrong direction
        reason = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise AudioDeviceError(f"{kind} device {device!r}: {reason}; {HOW_TO_PICK.format(kind=kind)}") from e
    label = f"{kind} device {info['index']} ({info['name']})"
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    try:
        check(device=info["index"], channels=1, dtype="float32", samplerate=sample_rate)
    except Exception as e:  # PortAudioError, ValueError: the message says what the device refused
        raise AudioDeviceError(f"{label} refuses mono float32 at {sample_rate} Hz: {e}") from e
    return int(info["index"])


def check_devices(
    input_device: int | str | None = None,
    output_device: int | str | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> tuple[int, int]:
    """Resolves the microphone and speaker (None: the defaults) to device indices, checking each
    can do mono float32 at `sample_rate`; raises a one-line `AudioDeviceError` otherwise."""
    sd = _sounddevice()
    return _resolve(sd, input_device, "input", sample_rate), _resolve(sd, output_device, "output", sample_rate)


def check_input_device(device: int | str | None = None, sample_rate: int = SAMPLE_RATE) -> int:
    """`check_devices` for a microphone alone (e.g. live transcription: no speaker needed)."""
    return _resolve(_sounddevice(), device, "input", sample_rate)


@contextlib.contextmanager
def open_streams(
    loop: DuplexLoop,
    sample_rate: int = SAMPLE_RATE,
    input_device: int | str | None = None,
    output_device: int | str | None = None,
    latency: str | float = "high",
) -> Iterator[tuple[object, object]]:
    """Opens and starts mono input/output streams at `sample_rate` feeding `loop`; closes them on exit."""
    input_device, output_device = check_devices(input_device, output_device, sample_rate)
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
        try:
            outstream = sd.OutputStream(
                samplerate=sample_rate, channels=1, dtype="float32", device=output_device,
                latency=latency, callback=on_output,
            )
        except BaseException:
            instream.close()
            raise
    except Exception as e:
        raise AudioDeviceError(
            f"cannot open audio devices {input_device} (input) and {output_device} (output) at {sample_rate} Hz: {e}"
        ) from e
    with instream, outstream:
        yield instream, outstream
