"""A one-line progress bar on a terminal: items done, real-time factor, time left."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class ProgressBar:
    """Redraws `[####....] 120/5000 frames · RTF 2.31 · ETA 3:12` on `stream` (at most 4 times a
    second). RTF is processing time over audio time: above 1 is slower than real time.
    `line()` prints a line of other text above the bar."""

    def __init__(self, total: int, seconds_per_item: float, unit: str = "frames", stream: TextIO | None = None):
        self.total, self.seconds_per_item, self.unit = total, seconds_per_item, unit
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self._drawn = 0.0
        self._shown = False
        self.done = 0

    def update(self, done: int, force: bool = False) -> None:
        self.done = done
        now = time.perf_counter()
        if not force and now - self._drawn < 0.25:
            return
        self._drawn = now
        elapsed = now - self.start
        rtf = elapsed / (done * self.seconds_per_item) if done else 0.0
        eta = elapsed / done * (self.total - done) if done else 0.0
        stats = f" {done}/{self.total} {self.unit} · RTF {rtf:.2f} · ETA {_clock(eta)}" if done else f" 0/{self.total} {self.unit}"
        width = max(10, min(40, shutil.get_terminal_size().columns - len(stats) - 3))
        filled = width * min(done, self.total) // max(1, self.total)
        self.stream.write(f"\r\x1b[K[{'#' * filled}{'.' * (width - filled)}]{stats}")
        self.stream.flush()
        self._shown = True

    def line(self, text: str) -> None:
        """Prints `text` on its own line above the bar."""
        self.clear()
        self.stream.write(text + "\n")
        self.update(self.done, force=True)

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
