"""WAV (RIFF) files read and written in pieces, so that memory does not grow with their length.

Reads integer PCM (8/16/24/32-bit) and IEEE float (32/64-bit), plain or WAVE_FORMAT_EXTENSIBLE.
Writes 16-bit PCM whose header always describes the samples written so far: the file is a valid
wav from its creation on and after every `write`, so an interrupted writer leaves a playable file
of what it produced.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import MoshiError
from ..files import atomic_path

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
_HEADER = 44  # RIFF + fmt (16 bytes) + data chunk header, as written by WavWriter


class WavFormatError(MoshiError, ValueError):
    """A wav this module cannot read or write; the message says what is wrong (without the file name)."""


def is_riff_wave(head: bytes) -> bool:
    """Whether the first 12 bytes of a file announce a RIFF/WAVE file."""
    return len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE"


@dataclass(frozen=True)
class WavInfo:
    sample_rate: int
    channels: int
    bits: int
    is_float: bool
    data_offset: int
    frames: int  # samples per channel


def read_info(f: BinaryIO) -> WavInfo:
    """Parses the header of an open wav file, leaving `f` at the first sample."""
    head = f.read(12)
    if not is_riff_wave(head):
        raise WavFormatError("not a RIFF/WAVE file")
    size = os.fstat(f.fileno()).st_size
    fmt = None
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            raise WavFormatError("no 'data' chunk" if fmt else "no 'fmt ' chunk")
        cid, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"fmt ":
            fmt = f.read(length)
            if len(fmt) < 16:
                raise WavFormatError("truncated 'fmt ' chunk")
            f.seek(length & 1, os.SEEK_CUR)
        elif cid == b"data":
            if fmt is None:
                raise WavFormatError("'data' chunk before 'fmt '")
            offset = f.tell()
            # Recorders that never finalized their header leave 0xFFFFFFFF or a size past the end.
            length = min(length, size - offset)
            return _info(fmt, offset, length)
        else:
            f.seek(length + (length & 1), os.SEEK_CUR)


def _info(fmt: bytes, offset: int, length: int) -> WavInfo:
    tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # the sub-format GUID starts with the format tag
    is_float = tag == _FLOAT
    if tag not in (_PCM, _FLOAT) or (is_float and bits not in (32, 64)) or (not is_float and bits not in (8, 16, 24, 32)):
        raise WavFormatError(f"unsupported wav encoding (format tag {tag:#x}, {bits} bits)")
    if channels < 1 or rate < 1 or align != channels * bits // 8:
        raise WavFormatError(f"inconsistent wav header ({channels} channels, {rate} Hz, block align {align})")
    return WavInfo(rate, channels, bits, is_float, offset, length // align)


class WavReader:
    """Reads a wav file's samples in pieces as float32 `[channels, n]` in [-1, 1]."""

    def __init__(self, path: str | Path):
        self._f = open(path, "rb")
        try:
            self.info = read_info(self._f)
        except BaseException:
            self._f.close()
            raise
        self._left = self.info.frames

    def read(self, n: int) -> np.ndarray:
        """The next `n` samples per channel (fewer at the end, none after it)."""
        info = self.info
        n = min(n, self._left)
        width = info.bits // 8
        raw = self._f.read(n * width * info.channels)
        n = len(raw) // (width * info.channels)
        raw = raw[: n * width * info.channels]
        self._left = 0 if n == 0 else self._left - n
        if info.is_float:
            x = np.frombuffer(raw, dtype=f"<f{width}").astype(np.float32)
        elif width == 1:
            x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
        elif width == 3:
            b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            x = (((v << 8) >> 8) / float(1 << 23)).astype(np.float32)  # sign-extend 24 bits
        else:
            x = (np.frombuffer(raw, dtype=f"<i{width}") / float(1 << (8 * width - 1))).astype(np.float32)
        return x.reshape(n, info.channels).T

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> WavReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WavWriter:
    """Writes mono or multi-channel float audio as 16-bit PCM, keeping the header valid after every
    `write` (the file can be read, copied or played at any moment and shows what was written)."""

    def __init__(self, path: str | Path, sample_rate: int, channels: int = 1):
        self.sample_rate, self.channels = sample_rate, channels
        self.frames = 0
        # The empty wav appears in one rename: the path never holds a file without a header.
        with atomic_path(path) as tmp:
            tmp.write_bytes(self._header(0))
        self._f = open(path, "r+b")
        self._f.seek(0, os.SEEK_END)

    def _header(self, frames: int) -> bytes:
        data = frames * 2 * self.channels
        return struct.pack(
            "<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, _PCM, self.channels,
            self.sample_rate, self.sample_rate * 2 * self.channels, 2 * self.channels, 16, b"data", data,
        )

    def write(self, pcm: np.ndarray) -> None:
        """Appends `[n]` (mono) or `[channels, n]` float samples (clipped to [-1, 1]) and updates the header."""
        pcm = np.asarray(pcm, dtype=np.float32)
        if pcm.ndim == 1:
            pcm = pcm[None]
        if pcm.shape[0] != self.channels:
            raise ValueError(f"expected {self.channels} channel(s), got audio of shape {pcm.shape}")
        if 36 + (self.frames + pcm.shape[1]) * 2 * self.channels > 0xFFFFFFFF:
            raise WavFormatError(f"a wav file holds at most 4 GiB ({0xFFFFFFDB // (2 * self.channels * self.sample_rate)} s here)")
        ints = np.round(np.clip(pcm, -1.0, 1.0) * 32767.0).astype("<i2")
        self._f.write(ints.T.tobytes())
        self.frames += pcm.shape[1]
        # Samples first, then the sizes that cover them: the header never claims unwritten data.
        self._f.seek(0)
        self._f.write(self._header(self.frames))
        self._f.seek(0, os.SEEK_END)
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
