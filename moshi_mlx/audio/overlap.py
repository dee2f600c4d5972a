"""Frames in flight: Mimi on its own thread while the LM steps on the caller's, so a frame costs about
max(LM, Mimi) rather than their sum. rustymimi and MLX release the GIL while they compute, so the
two run on two cores at once.

Per frame t the caller `push`es the user's audio (its encode is queued on the Mimi thread at once,
so frame t+1's encode runs during the LM step of frame t) and calls `step`, which runs the LM on the
oldest pushed frame and queues that step's decode (which then runs during the next LM step). The
Mimi thread runs its jobs in order, so Mimi's encoder and decoder see the same sequence as with
`Conversation.step`, and the LM the same codes: the results are identical, frame for frame.
Only evaluated data crosses threads (numpy codes and tokens): MLX arrays stay with their thread.
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import mlx.core as mx
import numpy as np

from ..errors import InvalidArgument
from .conversation import Conversation, FrameResult


def release_thread_streams() -> None:
    """Call at the end of a thread that ran MLX work: waits for it and frees the thread's MLX
    streams. MLX gives each thread its own streams; left alive past their thread they abort the
    process at exit ("terminate called without an active exception")."""
    mx.synchronize()
    mx.clear_streams()


class OverlappedSteps:
    """Drives a `Conversation` with Mimi work overlapping the LM steps.

    Results arrive in frame order, one per `step`: passed to `on_result` on the Mimi thread as
    soon as each is decoded (lowest latency, e.g. for a speaker buffer), or else kept for `ready()`
    and `finish()` on the caller's thread. `close()` (or leaving the `with` block) waits for the
    queued work and stops the thread; errors on the Mimi thread are raised in the caller's thread
    by the next `push`, `step`, `ready`, `finish` or `close`.
    """

    def __init__(self, conversation: Conversation, on_result: Callable[[FrameResult], None] | None = None):
        self.conversation = conversation
        self.on_result = on_result
        self._mimi = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moshi-mimi")
        self._encoded: collections.deque[Future] = collections.deque()
        self._decoding: collections.deque[Future] = collections.deque()
        self._results: collections.deque[FrameResult] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        self._failed = False  # an error of the Mimi thread was raised to the caller


    @property
    def pending(self) -> int:
        """Frames pushed and not yet stepped."""
        return len(self._encoded)

    def push(self, pcm: np.ndarray) -> None:
        """Queues the next user frame; its encode starts as soon as the Mimi thread is free."""
        self._check()
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if pcm.shape[0] != self.conversation.frame_size:
            raise InvalidArgument(f"expected a frame of {self.conversation.frame_size} samples, got {pcm.shape[0]}")
        self._encoded.append(self._mimi.submit(lambda: np.array(self.conversation.encode(pcm))))

    def step(self) -> None:
        """Runs the LM on the oldest pushed frame (waiting for its encode) and queues its decode."""
        self._check()
        if not self._encoded:
            raise RuntimeError("step() without a pushed frame")
        codes = self._result(self._encoded.popleft())
        tokens = self.conversation.lm_step(mx.array(codes))
        host = None if tokens is None else np.array(tokens)  # read here: the LM's arrays stay on this thread
        self._decoding.append(self._mimi.submit(self._decode, host))

    def _decode(self, tokens: np.ndarray | None) -> None:
        result = FrameResult("", None, None) if tokens is None else self.conversation.decode(mx.array(tokens))
        if self.on_result is not None:
            self.on_result(result)
        else:
            with self._lock:
                self._results.append(result)

    def _result(self, f: Future):
        try:
            return f.result()
        except BaseException:
            self._failed = True
            raise

    def _check(self) -> None:
        """Raises the first error of a finished Mimi job; forgets finished decode jobs."""
        if self._closed:
            raise RuntimeError("the overlapped steps are closed")
        while self._decoding and self._decoding[0].done():
            self._result(self._decoding.popleft())
        for f in self._encoded:
            if f.done() and f.exception() is not None:
                self._result(f)

    def ready(self) -> list[FrameResult]:
        """Results decoded so far and not yet returned (without `on_result`), in frame order."""
        self._check()
        with self._lock:
            out = list(self._results)
            self._results.clear()
        return out

    def finish(self) -> list[FrameResult]:
        """Waits for every stepped frame's decode; returns the results not yet returned."""
        while self._decoding:
            self._result(self._decoding.popleft())
        return self.ready()

    def close(self) -> None:
        """Drops frames pushed but not stepped, waits for the queued work, stops the Mimi thread;
        raises the first error of that work unless an error was raised already."""
        if self._closed:
            return
        self._closed = True
        for f in self._encoded:
            f.cancel()
        self._encoded.clear()
        self._mimi.submit(release_thread_streams)  # the last job of the Mimi thread
        self._mimi.shutdown(wait=True)
        errors = [f.exception() for f in self._decoding if not f.cancelled() and f.exception() is not None]
        self._decoding.clear()
        if errors and not self._failed:
            self._failed = True
            raise errors[0]

    def __enter__(self) -> "OverlappedSteps":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            try:
                self.close()
            except Exception:
                pass  # the error already on its way out matters more
