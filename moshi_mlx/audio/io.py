"""Audio files as 24 kHz mono float32: read whole or streamed in frames, written whole (atomically)
or progressively.

Streaming: wav files (PCM 8/16/24/32-bit, float 32/64) are read from disk piece by piece, so memory
does not grow with their length. Other formats (mp3, ogg/opus, flac, ...) are decoded whole by sphn
first (its piecewise decoding is not sample-exact for every codec): about `rate * channels * 4`
bytes per second of audio; convert very long recordings to wav (`sox long.mp3 long.wav`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import MoshiError
from ..files import atomic_path
from .resample import Resampler, resample
from .wav import WavFormatError, WavReader, WavWriter, is_riff_wave

__all__ = ["SAMPLE_RATE", "AudioError", "AudioReader", "WavWriter", "read_audio", "resample", "to_mono", "write_wav"]

SAMPLE_RATE = 24_000
_CHUNK_SECONDS = 1.0  # how much input is read at a time


class AudioError(MoshiError, ValueError):
    """Audio that cannot be read or used; the message names the file and the problem."""


def to_mono(pcm: np.ndarray, source: str = "audio") -> np.ndarray:
    """Downmixes `[T]` or `[C, T]` audio to `[T]` by averaging channels."""
    pcm = np.asarray(pcm)
    if pcm.ndim == 1:
        return pcm.astype(np.float32, copy=False)
    if pcm.ndim == 2:
        return pcm.mean(axis=0).astype(np.float32)
    raise AudioError(f"{source}: expected [T] or [channels, T] samples, got shape {pcm.shape}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else repr(e)


class AudioReader:
    """A file's audio as mono float32 at `sample_rate`, read in pieces (see the module docstring).

    Opening checks the file (exists, readable, decodable, not empty) and raises `AudioError`.
    `samples` is the length after resampling.
    """

    def __init__(self, path: str | Path, sample_rate: int = SAMPLE_RATE):
        self.path = path = Path(path)
        self.sample_rate = sample_rate
        if path.is_dir():
            raise AudioError(f"{path}: is a folder, not an audio file")
        if not path.is_file():
            raise AudioError(f"{path}: no such file")
        self._wav: WavReader | None = None
        self._decoded: np.ndarray | None = None
        try:
            with open(path, "rb") as f:
                head = f.read(12)
        except OSError as e:
            raise AudioError(f"{path}: cannot read ({e.strerror or e})") from e
        try:
            if is_riff_wave(head):
                self._wav = WavReader(path)
        except WavFormatError:
            pass  # other encodings inside a RIFF/WAVE container: sphn may know them
        except OSError as e:
            raise AudioError(f"{path}: cannot read ({e.strerror or e})") from e
        if self._wav is not None:
            self.source_rate, length = self._wav.info.sample_rate, self._wav.info.frames
        else:
            self._decoded, self.source_rate = self._decode_whole(path, head)
            length = len(self._decoded)
        if length == 0:
            self.close()
            raise AudioError(f"{path}: contains no samples")
        self.samples = round(length * sample_rate / self.source_rate)

    @staticmethod
    def _decode_whole(path: Path, head: bytes) -> tuple[np.ndarray, int]:
        import sphn

        try:
            data, rate = sphn.read(str(path))
        except Exception as e:  # sphn raises plain exceptions with decoder messages
            detail = _first_line(e)
            if is_riff_wave(head):
                try:  # say what our own reader found wrong, which is clearer than the decoder's view
                    WavReader(path).close()
                except WavFormatError as ours:
                    detail = str(ours)
            raise AudioError(f"{path}: cannot decode audio ({detail})") from e
        return to_mono(np.asarray(data, dtype=np.float32), str(path)), int(rate)

    def chunks(self) -> Iterator[np.ndarray]:
        """The audio in consecutive pieces of about a second; `samples` samples in all."""
        resampler = Resampler(self.source_rate, self.sample_rate)
        step = max(1, int(self.source_rate * _CHUNK_SECONDS))
        if self._wav is not None:
            while True:
                piece = self._wav.read(step)
                if piece.shape[1] == 0:
                    break
                yield resampler.push(to_mono(piece, str(self.path)))
        else:
            for a in range(0, len(self._decoded), step):
                yield resampler.push(self._decoded[a : a + step])
        yield resampler.flush()

    def frames(self, frame_size: int) -> Iterator[np.ndarray]:
        """Consecutive frames of `frame_size` samples; the last one is padded with zeros."""
        pending, held = [], 0
        for piece in self.chunks():
            pending.append(piece)
            held += len(piece)
            if held >= frame_size:
                buf = np.concatenate(pending)
                whole = len(buf) // frame_size * frame_size
                yield from buf[:whole].reshape(-1, frame_size)
                pending, held = [buf[whole:]], len(buf) - whole
        if held:
            rest = np.concatenate(pending)
            yield np.pad(rest, (0, frame_size - len(rest)))

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
        self._decoded = None

    def __enter__(self) -> AudioReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Reads any file sphn can decode (wav, mp3, ogg/opus, flac) as mono float32 at `sample_rate`."""
    with AudioReader(path, sample_rate) as reader:
        return np.concatenate(list(reader.chunks()))


def write_wav(path: str | Path, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Writes mono float32 `pcm` as a 16-bit wav file, atomically: `path` is replaced only when
    complete. Creates missing parent folders."""
    path = Path(path)
    pcm = to_mono(pcm, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, WavWriter(tmp, sample_rate) as writer:
        writer.write(pcm)
    return path
