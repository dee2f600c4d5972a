"""Offline conversation: a recorded user turn in, Moshi's voice and text out, streamed from and to
disk so that memory stays flat for any length.

Time alignment: output frame i (80 ms) is Moshi's voice during input frame i; the output has as many
frames as the input, the input's length rounded up to whole frames (the last frame is padded with
silence). Moshi's audio comes `max_delay` model steps after the input that produced it, so that many
silent frames are fed after the input to flush it out.

Nothing is lost: the wav at the output path is valid after every frame (its header is rewritten with
each frame) and the text file grows piece by piece. A run that stops early, for any reason, leaves
the first `frames_written` frames of the answer and the text so far.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..errors import MoshiError
from ..models.codec import FRAME_SIZE
from .conversation import Conversation, FrameResult
from .overlap import OverlappedSteps
from .io import SAMPLE_RATE, AudioReader, WavWriter


class OutputError(MoshiError, ValueError):
    """An output path that cannot be used; the message names it."""


def _writable_parent(path: Path, what: str) -> None:
    """Checks that `path`'s folder exists and is writable, or could be created."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: cannot create the {what} there: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write the {what}: {parent} is not writable")


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_outputs(input_path: str | Path, output: str | Path, text_out: str | Path | None = None) -> None:
    """Refuses outputs that cannot work, before any work is done: a folder, the input itself, the
    same path twice, an unwritable folder. Missing parent folders are fine (they are created)."""
    input_path, output = Path(input_path), Path(output)
    outputs = [(output, "answer")] + ([(Path(text_out), "text")] if text_out is not None else [])
    for path, what in outputs:
        if path.is_dir():
            raise OutputError(f"{path}: is a folder; give a file name for the {what}")
        if _same_file(path, input_path):
            raise OutputError(f"{path}: is the input file; refusing to overwrite it with the {what}")
        if path.exists() and not os.access(path, os.W_OK):
            raise OutputError(f"{path}: exists and is not writable")
        _writable_parent(path, what)
    if text_out is not None and _same_file(output, Path(text_out)):
        raise OutputError(f"{output}: given for both the answer and the text")


class FileRun:
    """One file through a `Conversation`. Creating it checks the input and outputs (raising
    `AudioError`/`OutputError`) without writing anything; `run` does the work.

    Progress is kept in `steps` (model steps taken), `frames_written` (output frames on disk) and
    `total_frames`, also after `run` stopped on an exception.
    """

    def __init__(self, input_path: str | Path, output: str | Path, text_out: str | Path | None = None, frame_size: int = FRAME_SIZE):
        check_outputs(input_path, output, text_out)
        self.output = Path(output)
        self.text_out = Path(text_out) if text_out is not None else None
        self.frame_size = frame_size
        self.reader = AudioReader(input_path, SAMPLE_RATE)
        self.total_frames = -(-self.reader.samples // frame_size)
        self.steps = 0
        self.frames_written = 0
        self.started: float | None = None
        self.finished: float | None = None

    def rtf(self) -> float | None:
        """Real-time factor of the run so far: processing time / duration of the input answered
        (the progress bar's measure)."""
        if self.started is None or not self.steps:
            return None
        end = self.finished if self.finished is not None else time.perf_counter()
        return (end - self.started) / self.seconds(min(self.steps, self.total_frames))

    def seconds(self, frames: int) -> float:
        """The duration of `frames` frames."""
        return frames * self.frame_size / SAMPLE_RATE

    def _inputs(self, flush: int) -> Iterator[np.ndarray]:
        yield from self.reader.frames(self.frame_size)
        silence = np.zeros(self.frame_size, dtype=np.float32)
        for _ in range(flush):
            yield silence

    def run(
        self,
        conversation: Conversation,
        on_text: Callable[[str], None] | None = None,
        on_frame: Callable[[FileRun], None] | None = None,
        should_stop: Callable[[], str | None] | None = None,
        overlap: bool = True,
    ) -> str | None:
        """Feeds the input frame by frame, writing Moshi's voice and text as they come. Returns None
        when the whole input was answered, or the reason `should_stop` gave (checked before each
        frame). Exceptions propagate after the outputs are closed, valid, holding every frame the
        model answered before the error.

        With `overlap` (default), Mimi encodes the next frame and decodes the last one while the LM
        steps (`OverlappedSteps`); the output is identical either way."""
        if conversation.frame_size != self.frame_size:
            raise ValueError(f"the model's frame is {conversation.frame_size} samples; this run was opened for {self.frame_size}")
        flush = conversation.lm_gen.lm.cfg.max_delay
        for path in (self.output, self.text_out):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        self.finished = None
        writer = WavWriter(self.output, SAMPLE_RATE)
        text = open(self.text_out, "w", encoding="utf-8") if self.text_out is not None else None

        def take(result: FrameResult) -> None:
            if result.pcm is not None and self.frames_written < self.total_frames:
                writer.write(result.pcm)
                self.frames_written += 1
            if result.text:
                if text is not None:
                    text.write(result.text)
                    text.flush()
                if on_text is not None:
                    on_text(result.text)

        frames = self._inputs(flush)
        steps = OverlappedSteps(conversation) if overlap else None
        failed = False
        try:
            if steps is not None:
                first = next(frames, None)
                if first is not None:
                    steps.push(first)  # from here on, frame t+1 is pushed before frame t steps
            while True:
                pcm = None if steps is not None else next(frames, None)
                if (steps.pending == 0) if steps is not None else (pcm is None):
                    return None
                reason = should_stop() if should_stop is not None else None
                if reason:
                    return reason
                if steps is not None:
                    nxt = next(frames, None)
                    if nxt is not None:
                        steps.push(nxt)  # encoded on the Mimi thread while the LM steps
                    steps.step()
                    for result in steps.ready():
                        take(result)
                else:
                    take(conversation.step(pcm))
                self.steps += 1
                if on_frame is not None:
                    on_frame(self)
        except BaseException:
            failed = True
            raise
        finally:
            try:
                if steps is not None:
                    try:  # every frame the LM answered reaches the outputs
                        for result in steps.finish():
                            take(result)
                        steps.close()
                    except Exception:
                        if not failed:
                            raise  # else the error already on its way out matters more
            finally:
                self.finished = time.perf_counter()
                writer.close()
                if text is not None:
                    text.write("\n")
                    text.close()
                self.reader.close()
