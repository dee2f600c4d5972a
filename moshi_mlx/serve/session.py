"""One websocket connection: a fresh conversation for as long as the client stays.

The client's Ogg/Opus pages are decoded as they come and cut into 80 ms frames for the model
worker; for every frame the client sent, exactly one frame of Moshi's audio goes back (silence
while the model's delays fill, and for frames dropped because the model was behind), so the
page can pair its n-th frame out with its n-th frame in. Text pieces follow the audio of their frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np
import sphn
from aiohttp import WSMsgType, web

from ..audio.duplex import DuplexStats, SampleFifo
from ..sampling import SamplingParams
from . import protocol
from .protocol import Kind
from .worker import ModelWorker, Output

log = logging.getLogger("moshi_mlx.serve")
SAMPLE_RATE = 24000

# Websocket close codes (RFC 6455).
CLOSE_NORMAL = 1000
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013


@dataclass
class SessionLimits:
    """How long a client may stay silent before the server hangs up (it holds the only model)."""

    idle_timeout: float = 30.0


class _Closed(Exception):
    """The conversation is over: `code` and an optional error message for the client."""

    def __init__(self, code: int = CLOSE_NORMAL, message: str | None = None):
        super().__init__(message or "")
        self.code = code
        self.message = message


async def run_session(
    ws: web.WebSocketResponse,
    query: dict[str, str],
    worker: ModelWorker,
    defaults: SamplingParams,
    limits: SessionLimits,
    peer: str,
) -> DuplexStats | None:
    """Talks with the client on `ws` (already prepared) until it leaves; returns the frame accounting."""
    try:
        options = protocol.session_options(query, defaults)
    except ValueError as e:
        await _close(ws, CLOSE_POLICY, f"bad query: {e}")
        return None
    loop = asyncio.get_running_loop()
    outputs: asyncio.Queue[Output] = asyncio.Queue()

    def sink(output: Output) -> None:  # on the model thread
        loop.call_soon_threadsafe(outputs.put_nowait, output)

    session = await asyncio.wrap_future(worker.begin(options.sampling, sink))
    started = time.monotonic()
    frame_size = worker.base.frame_size
    closed = _Closed()
    try:
        await ws.send_bytes(protocol.handshake())
        receiver = asyncio.ensure_future(_receive(ws, worker, session, frame_size, limits))
        sender = asyncio.ensure_future(_send(ws, outputs, frame_size))
        done, pending = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if isinstance(task.exception(), _Closed):
                closed = task.exception()
            elif task.exception() is not None and not isinstance(task.exception(), ConnectionError):
                raise task.exception()
    finally:
        stats = worker.end(session)  # at once: the next client must not wait for our queued frames
        stats.seconds = time.monotonic() - started
    if not ws.closed:
        await _close(ws, closed.code, closed.message)
    log.info("%s: conversation ended (%s): %s", peer, closed.message or "client left", summary(stats))
    return stats


def summary(stats: DuplexStats) -> str:
    """One line of a conversation's frame accounting (80 ms frames)."""
    steps = np.array(stats.step_ms) if stats.step_ms else np.zeros(1)
    return (
        f"{stats.seconds:.1f} s: frames in {stats.frames_in}, processed {stats.frames_processed}, dropped (model "
        f"behind) {stats.frames_dropped_in}, pending at the end {stats.frames_pending}; step ms median "
        f"{np.median(steps):.1f} p95 {np.percentile(steps, 95):.1f}"
    )


async def _close(ws: web.WebSocketResponse, code: int, message: str | None) -> None:
    try:
        if message:
            await ws.send_bytes(protocol.error(message))
        await ws.close(code=code, message=(message or "").encode()[:120])
    except (ConnectionError, RuntimeError):  # the client is already gone
        pass


async def _receive(ws, worker: ModelWorker, session, frame_size: int, limits: SessionLimits) -> None:
    reader = sphn.OpusStreamReader(SAMPLE_RATE)
    pending = SampleFifo()
    while True:
        try:
            message = await ws.receive(timeout=limits.idle_timeout)
        except asyncio.TimeoutError:
            raise _Closed(CLOSE_POLICY, f"no message for {limits.idle_timeout:g} s: closing") from None
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return
        if message.type == WSMsgType.ERROR:  # e.g. a message over the size limit (closed with 1009)
            log.warning("websocket error: %s", ws.exception())
            return
        if message.type != WSMsgType.BINARY:
            continue  # the protocol is binary; a text frame means nothing to it
        parts = protocol.split(message.data)
        if parts is None or parts[0] != Kind.AUDIO:
            continue  # empty, or a kind a client does not send to a server: discarded
        try:
            pcm = reader.append_bytes(parts[1])
        except Exception as e:  # sphn raises ValueError for bytes that are not Ogg/Opus; the stream is lost
            raise _Closed(CLOSE_INVALID_DATA, f"malformed Ogg/Opus audio: {e}") from None
        pending.push(np.asarray(pcm, dtype=np.float32).reshape(-1))
        while (frame := pending.pop(frame_size)) is not None:
            worker.push(session, frame)


async def _send(ws, outputs: asyncio.Queue, frame_size: int) -> None:
    writer = sphn.OpusStreamWriter(SAMPLE_RATE)
    silence = np.zeros(frame_size, dtype=np.float32)
    while True:
        output: Output = await outputs.get()
        if output.error is not None:
            raise _Closed(CLOSE_NORMAL, output.error)
        result = output.result
        pcm = result.pcm if result is not None and result.pcm is not None else silence
        ogg = writer.append_pcm(pcm)
        if ogg:
            await ws.send_bytes(protocol.audio(ogg))
        if result is not None and result.text:
            await ws.send_bytes(protocol.text(result.text))
