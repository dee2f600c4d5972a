"""Band-limited (Kaiser-windowed sinc) resampling, whole-signal or streamed in pieces.

Output sample `n` sits at input position `n * rate / target`: no delay, `round(len * target / rate)`
samples in all, anti-aliased when downsampling. `Resampler` gives exactly what `resample` gives for
the concatenated input, whatever the pieces, holding only a few dozen input samples between calls.
"""

from __future__ import annotations

import math

import numpy as np

_BETA = 8.6  # Kaiser window shape


class _Kernel:
    """The interpolation filter for one rate pair; `zeros` sinc zero crossings on each side."""

    def __init__(self, rate: int, target: int, zeros: int):
        if rate <= 0 or target <= 0:
            raise ValueError(f"invalid sample rate {rate} -> {target}")
        self.ratio = target / rate
        self.cutoff = min(1.0, self.ratio)  # fraction of the input Nyquist band that is kept
        self.half = int(np.ceil(zeros / self.cutoff))
        self.offsets = np.arange(-self.half + 1, self.half + 1)

    def base(self, n: int) -> int:
        """The input sample at or before output sample `n`."""
        return math.floor(n / self.ratio)

    def interpolate(self, signal: np.ndarray, start: int, n0: int, n1: int) -> np.ndarray:
        """Output samples `n0..n1-1` from float64 `signal`, whose element 0 is input sample `start`
        (and which covers every tap those outputs need)."""
        out = np.empty(n1 - n0, dtype=np.float32)
        rows = max(1, 2**20 // len(self.offsets))
        for a in range(n0, n1, rows):
            pos = np.arange(a, min(n1, a + rows)) / self.ratio  # positions in input samples
            base = np.floor(pos).astype(np.int64)
            dist = (pos - base)[:, None] - self.offsets[None, :]
            window = np.i0(_BETA * np.sqrt(np.clip(1.0 - (dist / self.half) ** 2, 0.0, None))) / np.i0(_BETA)
            taps = self.cutoff * np.sinc(self.cutoff * dist) * window
            out[a - n0 : a - n0 + len(pos)] = (signal[base[:, None] + self.offsets[None, :] - start] * taps).sum(axis=1)
        return out


def resample(pcm: np.ndarray, rate: int, target: int, zeros: int = 16) -> np.ndarray:
    """Resamples mono `pcm` from `rate` to `target` Hz (the whole signal at once)."""
    pcm = np.asarray(pcm, dtype=np.float32)
    kernel = _Kernel(rate, target, zeros)
    if rate == target:
        return pcm
    padded = np.pad(pcm.astype(np.float64), (kernel.half, kernel.half + 1))
    return kernel.interpolate(padded, -kernel.half, 0, round(len(pcm) * kernel.ratio))


class Resampler:
    """Streaming `resample`: `push` pieces, then `flush` once; the outputs concatenated equal
    `resample(concatenated inputs)`. `reset()` starts a new signal."""

    def __init__(self, rate: int, target: int, zeros: int = 16):
        self.rate, self.target = rate, target
        self._kernel = _Kernel(rate, target, zeros)
        self.reset()

    def reset(self) -> None:
        half = self._kernel.half
        self._buffer = np.zeros(half, dtype=np.float64)  # input samples from index `_start` on
        self._start = -half  # negative indices are the zero padding before the signal
        self._inputs = 0
        self._outputs = 0

    def _first_output_past(self, limit: int) -> int:
        """The first output sample whose base input sample is >= `limit`."""
        n = max(self._outputs, math.ceil(limit * self._kernel.ratio))
        while n > self._outputs and self._kernel.base(n - 1) >= limit:
            n -= 1
        while self._kernel.base(n) < limit:
            n += 1
        return n

    def _emit(self, end: int) -> np.ndarray:
        k = self._kernel
        out = k.interpolate(self._buffer, self._start, self._outputs, end) if end > self._outputs else np.zeros(0, np.float32)
        self._outputs = max(self._outputs, end)
        keep = k.base(self._outputs) - k.half + 1  # the lowest input index later outputs read
        if keep > self._start:
            self._buffer = self._buffer[keep - self._start :]
            self._start = keep
        return out

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Takes the next mono samples; returns the output samples they complete (maybe none)."""
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if self.rate == self.target:
            return pcm
        self._buffer = np.concatenate([self._buffer, pcm.astype(np.float64)])
        self._inputs += len(pcm)
        # Output n needs inputs up to base(n) + half: emit those whose taps have all arrived.
        return self._emit(self._first_output_past(self._inputs - self._kernel.half))

    def flush(self) -> np.ndarray:
        """Ends the signal (zeros after it, as `resample` pads) and returns the remaining samples."""
        if self.rate == self.target:
            return np.zeros(0, dtype=np.float32)
        self._buffer = np.concatenate([self._buffer, np.zeros(self._kernel.half + 1)])
        out = self._emit(round(self._inputs * self._kernel.ratio))
        self.reset()
        return out
