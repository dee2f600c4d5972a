"""moshi-finetune's dataset format, read, checked up front and turned into cached training windows.

A dataset is a `.jsonl` file of `{"path": "x.wav", "duration": seconds}` lines (a relative path is
taken from the jsonl's folder, then from the current folder). Each wav is stereo: left = Moshi (the
voice being trained), right = the user. Beside it, `x.json` holds `{"alignments": [[word, [start, end],
speaker], ...]}` (times in seconds; the main speaker is `SPEAKER_MAIN`, as moshi-finetune's
`annotate.py` writes). Each recording is cut into `duration_sec` windows from 0 while the start is
before its duration; each window is Mimi-encoded per channel (as moshi-finetune encodes each chunk),
audio past the end becomes the zero token -1. Codes are cached in `cache_dir` keyed by the file's
path, size and time and by the Mimi weights, so epochs and reruns do not re-encode.

Every file is checked before training starts; each problem is one line naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..audio.resample import resample
from ..audio.wav import WavReader
from ..errors import MoshiError
from ..files import atomic_path
from ..models.codec import MimiLike
from .interleaver import Alignment, Interleaver, num_window_frames, window_alignments

SAMPLE_RATE = 24_000
FRAME_RATE = 12.5
FRAME_SIZE = int(SAMPLE_RATE / FRAME_RATE)


class DataError(MoshiError, ValueError):
    """A dataset file that cannot be used; the message names the file (and line)."""


@dataclass
class Recording:
    """One jsonl line: a stereo wav, its declared duration and its alignments file."""

    wav: Path
    duration: float
    alignments: Path
    where: str  # "data.jsonl:3", for messages


def read_jsonl(path: str | Path) -> list[Recording]:
    """The recordings a jsonl lists (paths resolved, files not yet opened)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such dataset file (expected a .jsonl of {{'path': ..., 'duration': ...}} lines)")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            item = json.loads(line)
        except ValueError as e:
            raise DataError(f"{where}: not a JSON object ({e})") from None
        if not isinstance(item, dict) or "path" not in item or "duration" not in item:
            raise DataError(f'{where}: each line needs "path" and "duration" keys, got {line.strip()[:80]}')
        duration = item["duration"]
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration):
            raise DataError(f'{where}: "duration" must be a number of seconds, got {duration!r}')
        if duration < 1.0 / FRAME_RATE:
            raise DataError(f"{where}: duration {duration} s is shorter than one Mimi frame ({1 / FRAME_RATE} s)")
        wav = Path(str(item["path"]))
        if not wav.is_absolute():
            beside = path.parent / wav
            wav = beside if beside.exists() or not wav.exists() else wav
        out.append(Recording(wav, float(duration), wav.with_suffix(".json"), where))
    if not out:
        raise DataError(f"{path}: the dataset lists no recordings")
    return out


def read_alignments(path: Path, where: str) -> list[Alignment]:
    """The `[word, [start, end], speaker]` entries of an alignments file, checked."""
    if not path.is_file():
        raise DataError(f"{where}: no alignments file {path} (the wav's name with .json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("alignments"), list):
        raise DataError(f'{path}: expected {{"alignments": [[word, [start, end], speaker], ...]}}')
    out = []
    for i, a in enumerate(data["alignments"]):
        ok = (
            isinstance(a, (list, tuple)) and len(a) == 3 and isinstance(a[0], str) and isinstance(a[2], str)
            and isinstance(a[1], (list, tuple)) and len(a[1]) == 2
            and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in a[1])
        )  # fmt: skip
        if not ok:
            raise DataError(f"{path}: alignment {i} is {json.dumps(a)[:80]}, expected [word, [start, end], speaker]")
        out.append((a[0], (float(a[1][0]), float(a[1][1])), a[2]))
    return out


def check_wav(rec: Recording) -> None:
    """Raises a DataError unless `rec.wav` is a readable stereo wav."""
    if not rec.wav.is_file():
        raise DataError(f"{rec.where}: no such wav file {rec.wav}")
    try:
        with WavReader(rec.wav) as r:
            info = r.info
    except (MoshiError, OSError, ValueError) as e:
        raise DataError(f"{rec.where}: {rec.wav}: {e}") from None
    if info.channels != 2:
        raise DataError(
            f"{rec.where}: {rec.wav} has {info.channels} channel(s); the format needs stereo "
            "(left = Moshi, right = the user)"
        )


def _cache_key(rec: Recording, duration_sec: float, mimi_id: str) -> str:
    st = rec.wav.stat()
    text = f"{rec.wav.resolve()}|{st.st_size}|{st.st_mtime_ns}|{rec.duration}|{duration_sec}|{mimi_id}"
    return hashlib.sha1(text.encode()).hexdigest()


def encode_windows(rec: Recording, mimi: MimiLike, duration_sec: float, codebooks: tuple[int, int]) -> np.ndarray:
    """Codes `[windows, n_moshi + n_user, frames]` (int16, -1 past the audio's end) of `rec`."""
    frames = num_window_frames(duration_sec, FRAME_RATE)
    starts = window_starts(rec.duration, duration_sec)
    n_moshi, n_user = codebooks
    out = np.full((len(starts), n_moshi + n_user, frames), -1, dtype=np.int16)
    with WavReader(rec.wav) as r:
        rate = r.info.sample_rate
        for w, start in enumerate(starts):
            end = min(starts[w + 1], rec.duration) if w + 1 < len(starts) else rec.duration
            pcm = r.read(max(0, round(end * rate) - round(start * rate)))
            if rate != SAMPLE_RATE and pcm.shape[1]:
                pcm = np.stack([resample(c, rate, SAMPLE_RATE) for c in pcm])
            n = min(frames, math.ceil(pcm.shape[1] / FRAME_SIZE))
            if n == 0:
                continue
            pcm = np.pad(pcm, ((0, 0), (0, n * FRAME_SIZE - pcm.shape[1])))[:, : n * FRAME_SIZE]
            codes = np.asarray(mimi.encode(pcm[:, None, :].astype(np.float32)))  # [2, K, n]
            out[w, :n_moshi, :n] = codes[0, :n_moshi, :n]
            out[w, n_moshi:, :n] = codes[1, :n_user, :n]
    return out


def window_starts(duration: float, duration_sec: float) -> list[float]:
    """Window starts of a recording (moshi-finetune: 0, d, 2d, ... while below the duration)."""
    starts, s = [], 0.0
    while s < duration:
        starts.append(s)
        s += duration_sec
    return starts


class WindowDataset:
    """All windows of a jsonl as `[1 + n_moshi + n_user, frames]` int32 code arrays (text first)."""

    def __init__(
        self,
        jsonl: str | Path,
        mimi: MimiLike,
        interleaver: Interleaver,
        duration_sec: float,
        codebooks: tuple[int, int],
        cache_dir: str | Path,
        mimi_id: str = "",
        on_encode: Callable[[int, int], None] | None = None,
    ):
        if duration_sec < 1.0 / FRAME_RATE:
            raise DataError(f"duration_sec {duration_sec} is shorter than one Mimi frame ({1 / FRAME_RATE} s)")
        self.recordings = read_jsonl(jsonl)
        alignments = []
        for rec in self.recordings:  # every check before any encoding
            check_wav(rec)
            alignments.append(read_alignments(rec.alignments, rec.where))
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        frames = num_window_frames(duration_sec, FRAME_RATE)
        self.items: list[np.ndarray] = []
        for i, (rec, al) in enumerate(zip(self.recordings, alignments)):
            if on_encode is not None:
                on_encode(i, len(self.recordings))
            cached = cache_dir / f"{_cache_key(rec, duration_sec, mimi_id)}.npy"
            if cached.is_file():
                audio = np.load(cached)
            else:
                audio = encode_windows(rec, mimi, duration_sec, codebooks)
                with atomic_path(cached) as tmp, open(tmp, "wb") as f:
                    np.save(f, audio)
            for w, start in enumerate(window_starts(rec.duration, duration_sec)):
                text = interleaver.stream(window_alignments(al, start, duration_sec), frames)
                self.items.append(np.concatenate([np.array(text, dtype=np.int32)[None], audio[w].astype(np.int32)]))

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, indices: Sequence[int]) -> np.ndarray:
        """Windows `indices` stacked: `[B, 1 + n_q, frames]`."""
        return np.stack([self.items[i] for i in indices])


def mimi_identity(path: str | Path) -> str:
    """A cache key part for a Mimi weights file (path, size, time)."""
    p = Path(path)
    try:
        st = p.stat()
        return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return os.fspath(p)
