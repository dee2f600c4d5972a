"""Live microphone input alone (live transcription): the device callback only queues the samples; the
caller reads them as they come, until asked to stop or after a given duration."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

from .devices import SAMPLE_RATE, AudioDeviceError, _sounddevice, check_input_device


class Microphone:
    """Mono float32 input at 24 kHz from `device` (None: the default); `chunks()` yields what it records."""

    def __init__(self, device: int | str | None = None, sample_rate: int = SAMPLE_RATE):
        self.device = check_input_device(device, sample_rate)
        self.sample_rate = sample_rate
        self.stop = threading.Event()  # set it (e.g. from a SIGINT handler) to end `chunks`
        self.overflows = 0
        self._queue: queue.Queue[np.ndarray] = queue.Queue()

    def _on_input(self, indata, frames, time_info, status) -> None:
        if status.input_overflow:
            self.overflows += 1
        self._queue.put(indata[:, 0].copy())

    def chunks(self, duration: float | None = None) -> Iterator[np.ndarray]:
        """The recorded samples, chunk by chunk, until `stop` is set or `duration` seconds were recorded."""
        sd = _sounddevice()
        limit = None if duration is None else int(duration * self.sample_rate)
        try:
            stream = sd.InputStream(samplerate=self.sample_rate, channels=1, dtype="float32", device=self.device,
                                    latency="low", callback=self._on_input)
        except Exception as e:  # PortAudioError: the message says what the device refused
            raise AudioDeviceError(f"cannot open input device {self.device} at {self.sample_rate} Hz: {e}") from e
        total = 0
        with stream:
            while not self.stop.is_set() and (limit is None or total < limit):
                try:
                    chunk = self._queue.get(timeout=0.05)
                except queue.Empty:
                    continue
                if limit is not None:
                    chunk = chunk[: limit - total]
                total += len(chunk)
                yield chunk
