"""The full-duplex loop: device callbacks only move numpy samples through thread-safe buffers;
the model runs on its own thread. When the model falls behind real time, the oldest input frames
are dropped; when decoded audio piles up (output clock slower than input), the oldest output is
dropped. Both are counted, so lag never grows without bound and never goes unreported."""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..models.codec import FRAME_SIZE
from .conversation import FrameResult
from .overlap import OverlappedSteps, release_thread_streams


class SampleFifo:
    """Thread-safe FIFO of float32 samples with arbitrary-sized reads and writes."""

    def __init__(self) -> None:
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._size = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    def push(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size:
            with self._lock:
                self._chunks.append(samples)
                self._size += samples.size

    def pop(self, n: int) -> np.ndarray | None:
        """Removes and returns `n` samples, or None (nothing removed) if fewer are buffered."""
        with self._lock:
            if self._size < n:
                return None
            out = np.empty(n, dtype=np.float32)
            filled = 0
            while filled < n:
                chunk = self._chunks[0]
                take = min(n - filled, chunk.size)
                out[filled : filled + take] = chunk[:take]
                filled += take
                if take == chunk.size:
                    self._chunks.popleft()
                else:
                    self._chunks[0] = chunk[take:]
            self._size -= n
            return out

    def drop_oldest(self, keep: int) -> int:
        """Discards the oldest samples so that at most `keep` remain; returns how many were dropped."""
        dropped = max(0, self._size - keep)
        if dropped:
            self.pop(dropped)
        return dropped

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._size = 0


@dataclass
class DuplexStats:
    """Frame accounting of a run (80 ms frames unless stated)."""

    frames_in: int = 0
    frames_processed: int = 0
    frames_dropped_in: int = 0
    frames_pending: int = 0  # arrived but neither processed nor dropped when the loop stopped
    frames_out: int = 0
    samples_dropped_out: int = 0
    output_underruns: int = 0
    seconds: float = 0.0  # how long the audio devices were open
    interrupted: bool = False  # ended by Ctrl-C (rather than by a duration or a stop request)
    device_overflows: int = 0  # input callbacks where the device reported lost samples
    device_underflows: int = 0  # output callbacks where the device reported a gap
    step_ms: list[float] = field(default_factory=list)

    def summary(self) -> str:
        steps = np.array(self.step_ms) if self.step_ms else np.zeros(1)
        how = " (Ctrl-C)" if self.interrupted else ""
        return (
            f"{self.seconds:.1f} s{how}: frames in {self.frames_in}, processed {self.frames_processed}, dropped (model behind) "
            f"{self.frames_dropped_in}, pending at stop {self.frames_pending}, out {self.frames_out}, output underruns {self.output_underruns}, "
            f"output dropped {self.samples_dropped_out} samples, device overflows {self.device_overflows} "
            f"underflows {self.device_underflows}; step ms median {np.median(steps):.1f} "
            f"p95 {np.percentile(steps, 95):.1f}"
        )


class DuplexLoop:
    """Connects audio callbacks to a `Conversation`-like object with a `step(frame) -> FrameResult`.

    `push_input` and `pull_output` are safe to call from audio callbacks (no model work, no
    blocking). `start()` runs the model thread; `stop()` ends it. On that thread, a `Conversation`
    runs with `overlap` (default): Mimi encodes the next frame (when it has arrived) and decodes the
    last one on a thread of its own while the LM steps, and Moshi's audio reaches the output buffer
    as soon as it is decoded.
    """

    def __init__(
        self,
        conversation,
        on_text: Callable[[str], None] | None = None,
        frame_size: int = FRAME_SIZE,
        max_input_backlog: int = 3,
        max_output_backlog: int = 6,
        overlap: bool = True,
    ):
        self.conversation = conversation
        self.on_text = on_text
        self.frame_size = frame_size
        self.max_input_backlog = max_input_backlog
        self.max_output_backlog = max_output_backlog
        self.overlap = overlap
        self._steps: OverlappedSteps | None = None  # while the model thread runs with overlap
        self._unstepped = 0  # frames the overlapped steps held when they closed
        self.stats = DuplexStats()
        self._pending = SampleFifo()  # input samples not yet forming a whole frame
        self._frames: queue.Queue[np.ndarray] = queue.Queue()
        self._output = SampleFifo()
        self._started_output = False
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None

    # Audio-callback side -------------------------------------------------------------------------

    def push_input(self, samples: np.ndarray) -> None:
        """Adds microphone samples (any length)."""
        self._pending.push(samples)
        while True:
            frame = self._pending.pop(self.frame_size)
            if frame is None:
                return
            self.stats.frames_in += 1
            self._frames.put(frame)

    def pull_output(self, n: int) -> np.ndarray:
        """Returns `n` samples for the speaker: Moshi's audio, or silence when none is ready."""
        out = self._output.pop(n)
        if out is not None:
            self._started_output = True
            return out
        if self._started_output:
            self.stats.output_underruns += 1
        partial = self._output.pop(len(self._output)) if len(self._output) else None
        silence = np.zeros(n, dtype=np.float32)
        if partial is not None:
            silence[: partial.size] = partial
        return silence

    # Model side ----------------------------------------------------------------------------------

    def _next_frame(self, timeout: float | None) -> np.ndarray | None:
        """The next input frame (waiting up to `timeout`; None: don't wait), dropping the oldest
        when the model fell behind; None if none came."""
        try:
            frame = self._frames.get(timeout=timeout) if timeout is not None else self._frames.get_nowait()
        except queue.Empty:
            return None
        # Controlled skipping: if the model fell behind, keep only the newest frames.
        while self._frames.qsize() >= self.max_input_backlog:
            try:
                frame = self._frames.get_nowait()
            except queue.Empty:
                break
            self.stats.frames_dropped_in += 1
        return frame

    def _deliver(self, result: FrameResult) -> None:
        """Moshi's audio to the output buffer, its text to `on_text`."""
        if result.pcm is not None:
            self._output.push(result.pcm)
            self.stats.frames_out += 1
            self.stats.samples_dropped_out += self._output.drop_oldest(self.max_output_backlog * self.frame_size)
        if result.text and self.on_text is not None:
            self.on_text(result.text)

    def process_available(self, timeout: float = 0.1) -> bool:
        """Runs at most one model step on the next input frame; returns False if none came."""
        steps = self._steps
        if steps is None or steps.pending == 0:
            frame = self._next_frame(timeout)
            if frame is None:
                return False
            if steps is None:
                start = time.perf_counter()
                result: FrameResult = self.conversation.step(frame)
                self.stats.step_ms.append(1000 * (time.perf_counter() - start))
                self.stats.frames_processed += 1
                self._deliver(result)
                return True
            steps.push(frame)
        start = time.perf_counter()
        ahead = self._next_frame(None)  # already here: encode it while the LM steps
        if ahead is not None:
            steps.push(ahead)
        steps.step()  # its audio is delivered by the Mimi thread once decoded
        self.stats.step_ms.append(1000 * (time.perf_counter() - start))
        self.stats.frames_processed += 1
        return True

    def _run(self, prepare: Callable[[], None] | None) -> None:
        try:
            if prepare is not None:
                prepare()
            if self.overlap and hasattr(self.conversation, "lm_step"):
                self._steps = OverlappedSteps(self.conversation, on_result=self._deliver)
            self._ready.set()
            while self._running.is_set():
                self.process_available()
            self._close_steps()
        except BaseException as e:  # surfaced by `stop()` on the main thread
            self.error = e
            self._running.clear()
            self._ready.set()
            try:
                self._close_steps()
            except BaseException:
                pass  # the first error is the one reported
        finally:
            release_thread_streams()

    def _close_steps(self) -> None:
        steps, self._steps = self._steps, None
        if steps is not None:
            self._unstepped = steps.pending
            try:
                steps.finish()
            finally:
                steps.close()

    def start(self, prepare: Callable[[], None] | None = None, wait: bool = True) -> None:
        """Starts the model thread; `prepare` (e.g. a warm-up) runs first on that thread.

        MLX streams are per thread, so all model work, warm-up included, happens there; with
        `wait`, returns once `prepare` is done (input arriving earlier would only pile up).
        """
        if self._thread is not None:
            raise RuntimeError("the loop is already running")
        self._running.set()
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, args=(prepare,), name="moshi-model", daemon=True)
        self._thread.start()
        if wait:
            self._ready.wait()
            if self.error is not None:
                self.stop()

    @property
    def running(self) -> bool:
        return self._running.is_set()

    def stop(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.stats.frames_pending = self._frames.qsize() + self._unstepped
        if self.error is not None:
            raise RuntimeError(f"the model thread failed: {self.error!r}") from self.error
