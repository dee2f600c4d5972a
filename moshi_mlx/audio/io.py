"""Reading and writing audio files as 24 kHz mono float32, with resampling and downmixing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

SAMPLE_RATE = 24_000


class AudioError(ValueError):
    """Audio that cannot be read or used; the message names the file and the problem."""


def to_mono(pcm: np.ndarray, source: str = "audio") -> np.ndarray:
    """Downmixes `[T]` or `[C, T]` audio to `[T]` by averaging channels."""
    pcm = np.asarray(pcm)
    if pcm.ndim == 1:
        return pcm.astype(np.float32, copy=False)
    if pcm.ndim == 2:
        return pcm.mean(axis=0).astype(np.float32)
    raise AudioError(f"{source}: expected [T] or [channels, T] samples, got shape {pcm.shape}")


def resample(pcm: np.ndarray, rate: int, target: int = SAMPLE_RATE, zeros: int = 16) -> np.ndarray:
    """Resamples mono `pcm` from `rate` to `target` Hz by band-limited (Kaiser-windowed sinc)
    interpolation: no delay, `round(len * target / rate)` output samples, anti-aliased when
    downsampling. `zeros` is the number of sinc zero crossings on each side."""
    pcm = np.asarray(pcm, dtype=np.float32)
    if rate <= 0 or target <= 0:
        raise AudioError(f"invalid sample rate {rate} -> {target}")
    if rate == target:
        return pcm
    ratio = target / rate
    cutoff = min(1.0, ratio)  # fraction of the input Nyquist band that is kept
    half = int(np.ceil(zeros / cutoff))
    offsets = np.arange(-half + 1, half + 1)
    padded = np.pad(pcm.astype(np.float64), (half, half + 1))
    n_out = int(round(len(pcm) * ratio))
    out = np.empty(n_out, dtype=np.float32)
    beta = 8.6
    chunk = max(1, 2**20 // len(offsets))
    for start in range(0, n_out, chunk):
        pos = np.arange(start, min(n_out, start + chunk)) / ratio  # positions in input samples
        base = np.floor(pos).astype(np.int64)
        dist = (pos - base)[:, None] - offsets[None, :]
        window = np.i0(beta * np.sqrt(np.clip(1.0 - (dist / half) ** 2, 0.0, None))) / np.i0(beta)
        taps = cutoff * np.sinc(cutoff * dist) * window
        out[start : start + len(pos)] = (padded[base[:, None] + offsets[None, :] + half] * taps).sum(axis=1)
    return out


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Reads any file sphn can decode (wav, mp3, ogg/opus, flac) as mono float32 at `sample_rate`."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    import sphn

    try:
        data, rate = sphn.read(str(path))
    except Exception as e:  # sphn raises plain exceptions with decoder messages
        raise AudioError(f"{path}: cannot decode audio ({str(e).strip().splitlines()[0] if str(e).strip() else e!r})") from None
    data = np.asarray(data, dtype=np.float32)
    if data.size == 0:
        raise AudioError(f"{path}: contains no samples")
    return resample(to_mono(data, str(path)), int(rate), sample_rate)


def write_wav(path: str | Path, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Writes mono float32 `pcm` as a wav file, via a temporary file so no partial output remains."""
    import sphn

    path = Path(path)
    pcm = to_mono(pcm, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".wav", dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        sphn.write_wav(tmp, np.clip(pcm, -1.0, 1.0).astype(np.float32), sample_rate)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
