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
) -> DuplexStats:
    """Talks until Ctrl-C, `duration` seconds or `should_stop()`; returns the frame accounting."""

    def show(text: str) -> None:
        out.write(text)
        out.flush()

    conversation.materialize()
    loop = DuplexLoop(conversation, on_text=show, frame_size=conversation.frame_size)
    loop.start(prepare=conversation.warmup)
    start = time.monotonic()
    try:
        with open_streams(loop, input_device=input_device, output_device=output_device):
            opened = time.monotonic()
            while loop.running and not should_stop():
                if duration is not None and time.monotonic() - start >= duration:
                    break
                time.sleep(0.05)
            loop.stats.seconds = time.monotonic() - opened
    except KeyboardInterrupt:
        pass
    finally:
        loop.stop()  # after the devices closed, so the frame accounting is final
    out.write("\n")
    return loop.stats
