"""Helpers for the `serve` tests: the server on a background thread (port 0), and a Python client
written from Kyutai's `rust/protocol.md`."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from pathlib import Path

import numpy as np

from moshi_mlx.audio.conversation import Conversation
from moshi_mlx.sampling import SamplingParams
from moshi_mlx.serve.server import MoshiServer, ServerOptions
from moshi_mlx.serve.session import SessionLimits
from moshi_mlx.serve.worker import ModelWorker

FRAME = 1920
SAMPLE_RATE = 24000


class RecordingMimi:
    """A Mimi that records the user-side codes each `encode_step` returns (the server's view)."""

    def __init__(self, mimi):
        self.mimi = mimi
        self.codes: list[np.ndarray] = []
        self.rms: list[float] = []  # of each frame the server heard

    def encode_step(self, pcm):
        codes = self.mimi.encode_step(pcm)
        self.codes.append(np.array(codes))
        self.rms.append(float(np.sqrt(np.mean(np.square(np.asarray(pcm, dtype=np.float64))))))
        return codes

    def __getattr__(self, name):
        return getattr(self.mimi, name)


def tiny_conversation(folder: Path, record: bool = False) -> Conversation:
    conversation = Conversation.from_pretrained(folder, mimi_backend="mlx", sampling=SamplingParams(seed=0))
    if record:
        conversation.mimi = RecordingMimi(conversation.mimi)
    return conversation


class RunningServer:
    """`MoshiServer` on its own event loop thread, listening on a free port of 127.0.0.1."""

    def __init__(self, conversation: Conversation, idle_timeout: float = 30.0, max_backlog: int = 3,
                 max_message_bytes: int | None = None, static: Path | None | str = "default",
                 ssl_dir: Path | None = None):
        self.worker = ModelWorker(conversation, max_backlog=max_backlog, warmup_frames=1)
        self.worker.start()
        options = ServerOptions(port=0, limits=SessionLimits(idle_timeout=idle_timeout), ssl_dir=ssl_dir)
        if max_message_bytes is not None:
            options.max_message_bytes = max_message_bytes
        if static != "default":
            options.static = static
        self.server = MoshiServer(self.worker, SamplingParams(seed=0), options)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.runner, self.url = self.loop.run_until_complete(self.server.start())
            started.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self.runner.cleanup())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        if not started.wait(30):
            raise RuntimeError("the server did not start")
        self.ws_url = self.url.replace("http", "ws", 1) + "api/chat"

    def idle(self, timeout: float = 10.0) -> bool:
        """Waits until no conversation runs; True if so."""
        end = time.monotonic() + timeout
        while self.server.busy and time.monotonic() < end:
            time.sleep(0.01)
        return not self.server.busy

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.worker.stop()


def parse_handshake(message: bytes) -> tuple[int, int]:
    """From protocol.md: kind 0, then u32 protocol version and u32 model version, little endian."""
    assert message[0] == 0, message[:1]
    return struct.unpack("<II", message[1:9])


def ogg_pages(pcm: np.ndarray) -> list[bytes]:
    """The Ogg/Opus pages a client sends for `pcm` (24 kHz mono float), 80 ms per page."""
    import sphn

    writer = sphn.OpusStreamWriter(SAMPLE_RATE)
    pages = []
    for i in range(0, len(pcm) - FRAME + 1, FRAME):
        page = writer.append_pcm(np.ascontiguousarray(pcm[i:i + FRAME], dtype=np.float32))
        if page:
            pages.append(page)
    return pages
