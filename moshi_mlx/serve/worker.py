"""The model thread of the server: it owns the `Conversation` (MLX arrays belong to the thread
that made them), runs one conversation at a time, and keeps it real time by dropping the oldest
input frames when more than `max_backlog` wait (counted, as in `chat`)."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..audio.conversation import Conversation, FrameResult
from ..audio.duplex import DuplexStats
from ..audio.overlap import release_thread_streams
from ..generate import LmGen
from ..sampling import SamplingParams



@dataclass
class Output:
    """What the worker hands back for each input frame, in order."""

    result: FrameResult | None  # None: the frame was dropped (the model was behind), or the model failed
    error: str | None = None  # the model failed: the conversation is over

    @property
    def dropped(self) -> bool:
        return self.result is None and self.error is None


Sink = Callable[[Output], None]


class _Session:
    def __init__(self, sink: Sink):
        self.sink = sink
        self.open = True
        self.stats = DuplexStats()
        self.pending = 0  # frames queued and not yet taken


class ModelWorker:
    """One thread that steps the conversation; `begin()` starts a fresh one for each connection.

    Thread-safe: `begin`, `push` and `end` may be called from any thread (the event loop)."""

    def __init__(
        self,
        conversation: Conversation,
        max_backlog: int = 3,
        warmup_frames: int = 4,
        fresh: Callable[[SamplingParams], Conversation] | None = None,
    ):
        """`fresh(sampling)` makes each connection's conversation (default: a new `LmGen` with that
        sampling and seed over `conversation`'s weights, Mimi and text stream)."""
        self.base = conversation
        self.conversation = conversation
        self._new = fresh or self._fresh
        self.max_backlog = max_backlog
        self._warmup_frames = warmup_frames
        self._jobs: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._session: _Session | None = None
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self.sessions = 0

    def start(self) -> None:
        """Starts the thread; returns once the model is warmed up on it. Call it on the thread that
        loaded the model: its lazy arrays are evaluated here first (MLX streams are per thread)."""
        self.base.materialize()
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="moshi-model", daemon=True)
        self._thread.start()
        ready.result()

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    # Called from the event loop ---------------------------------------------------------------

    def begin(self, sampling: SamplingParams, sink: Sink) -> concurrent.futures.Future:
        """Starts a new conversation (fresh state, this sampling and seed) whose results go to `sink`.
        The returned future resolves to the session handle once the model is ready for it."""
        session = _Session(sink)
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put(("begin", session, sampling, done))
        return done

    def push(self, session: _Session, frame: np.ndarray) -> None:
        """Queues one frame of the user's audio for `session`."""
        if not session.open:
            return
        with self._lock:
            session.stats.frames_in += 1
            session.pending += 1
        self._jobs.put(("frame", session, frame))

    def end(self, session: _Session) -> DuplexStats:
        """Ends `session` at once: its queued frames are discarded, its sink never called again."""
        with self._lock:
            session.open = False
            session.stats.frames_pending = session.pending
        return session.stats

    # The model thread ---------------------------------------------------------------------------

    def _run(self, ready: concurrent.futures.Future) -> None:
        try:
            self._serve(ready)
        finally:
            release_thread_streams()

    def _serve(self, ready: concurrent.futures.Future) -> None:
        try:  # state made on this thread: a fresh conversation, as each connection gets
            self.conversation = self._new(SamplingParams())
            self.conversation.warmup(self._warmup_frames)
        except BaseException as e:
            ready.set_exception(e)
            return
        ready.set_result(None)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if job[0] == "begin":
                    _, session, sampling, done = job
                    if not done.set_running_or_notify_cancel():
                        continue
                    try:
                        self.conversation = self._new(sampling)
                    except BaseException as e:
                        done.set_exception(e)
                        continue
                    self._session = session
                    self.sessions += 1
                    done.set_result(session)
                else:
                    self._frame(job[1], job[2])
            except Exception as e:  # a bug in a step: end that conversation, keep serving
                self.error = e
                session = job[1]
                if isinstance(session, _Session) and session.open:
                    session.open = False
                    session.sink(Output(None, f"the model failed: {type(e).__name__}: {e}"))

    def _fresh(self, sampling: SamplingParams) -> Conversation:
        """A conversation over the same weights with new state, samplers and seed."""
        base = self.base
        gen = LmGen(base.lm_gen.lm, sampling.text_sampler(), sampling.audio_sampler(), seed=sampling.seed)
        conversation = Conversation(gen, base.mimi, base.text, base.frame_size)
        conversation.reset()
        return conversation

    def _frame(self, session: _Session, frame: np.ndarray) -> None:
        with self._lock:
            session.pending -= 1
            if not session.open or session is not self._session:
                return
            behind = session.pending >= self.max_backlog
            if behind:
                session.stats.frames_dropped_in += 1
        if behind:  # keep only the newest frames: the oldest are the ones the model cannot catch up on
            session.sink(Output(None))
            return
        start = time.perf_counter()
        result = self.conversation.step(frame)
        ms = 1000 * (time.perf_counter() - start)
        with self._lock:
            session.stats.frames_processed += 1
            session.stats.step_ms.append(ms)
            if result.pcm is not None:
                session.stats.frames_out += 1
            if not session.open:
                return
        session.sink(Output(result))
