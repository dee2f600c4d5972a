"""Live full-duplex chat: microphone -> Moshi -> speaker, printing Moshi's words as they come."""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from .conversation import Conversation
from .devices import open_streams
from .duplex import DuplexLoop, DuplexStats


def chat(
    conversation: Conversation,
    duration: float | None = None,
    input_device: int | str | None = None,
    output_device: int | str | None = None,
    out: TextIO = sys.stdout,
    should_stop: Callable[[], bool] = lambda: False,
    on_listening: Callable[[], None] | None = None,
) -> DuplexStats:
    """Talks until Ctrl-C, `duration` seconds of listening, or `should_stop()`; returns the frame accounting.

    The model warms up first, then the devices open and `on_listening` is called (e.g. to tell
    the user to speak). Ctrl-C while listening is the normal way to end: it returns the stats
    (`stats.interrupted` set) with the listening time and every frame accounted for. Ctrl-C
    before the devices opened propagates as `KeyboardInterrupt`. Device errors raise
    `AudioDeviceError`; a failure of the model thread raises `RuntimeError`.
    """

    def show(text: str) -> None:
        out.write(text)
        out.flush()

    conversation.materialize()
    loop = DuplexLoop(conversation, on_text=show, frame_size=conversation.frame_size)
    opened = None
    try:
        loop.start(prepare=conversation.warmup)
        with open_streams(loop, input_device=input_device, output_device=output_device):
            opened = time.monotonic()
            try:
                if on_listening is not None:
                    on_listening()
                while loop.running and not should_stop():
                    if duration is not None and time.monotonic() - opened >= duration:
                        break
                    time.sleep(0.05)
            except KeyboardInterrupt:
                loop.stats.interrupted = True
    finally:
        if opened is not None:  # until the devices closed: input keeps arriving while they close
            loop.stats.seconds = time.monotonic() - opened
        loop.stop()  # after the devices closed, so the frame accounting is final
    out.write("\n")
    out.flush()
    return loop.stats
