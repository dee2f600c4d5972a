"""`serve` under abuse (slow): 100 connect/disconnect cycles, some leaving mid-message, with a second
client refused as busy along the way; the server still answers afterwards and its memory stays flat."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import sphn
from serve_support import RunningServer, ogg_pages, tiny_conversation

from moshi_mlx.weights.tiny import make_tiny_model

pytestmark = pytest.mark.slow
SPEECH = Path(__file__).resolve().parent / "assets" / "speech_24k.wav"
CYCLES = 100


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status (not Linux)")


async def cycle(server: RunningServer, pages: list[bytes], i: int, busy: list[bytes]) -> int:
    """One client: handshake, a few pages (every 7th leaves mid-page, every 10th meets a second
    client, who must be told busy); returns the audio messages it received."""
    received = 0
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.ws_url) as ws:
            assert (await ws.receive_bytes(timeout=30))[0] == 0
            if i % 10 == 0:
                async with http.ws_connect(server.ws_url) as second:
                    busy.append(await second.receive_bytes(timeout=10))
            for page in pages[: 1 + i % 3]:
                await ws.send_bytes(b"\x01" + page)
            if i % 7 == 0:
                await ws.send_bytes(b"\x01" + pages[3][: len(pages[3]) // 3])
                return received  # gone mid-page, without waiting for anything
            for _ in range(1 + i % 3):
                message = await ws.receive(timeout=10)
                received += message.type == aiohttp.WSMsgType.BINARY and message.data[0] == 1
    return received


def test_100_connections_busy_clients_and_flat_memory(tmp_path):
    folder = make_tiny_model(tmp_path / "tiny-moshi")
    server = RunningServer(tiny_conversation(folder), idle_timeout=5.0)
    pcm = sphn.read(str(SPEECH), sample_rate=24000)[0][0]
    pages = ogg_pages(pcm[: 24000])
    busy: list[bytes] = []
    try:
        rss = {}
        for i in range(CYCLES):
            got = asyncio.run(cycle(server, pages, i, busy))
            assert i % 7 == 0 or got >= 1, f"cycle {i}: no audio back"
            assert server.idle(timeout=5.0), f"cycle {i}: the session was not freed"
            if i in (19, CYCLES - 1):
                rss[i] = rss_mb()
        assert len(busy) == CYCLES // 10 and all(m[0] == 5 and b"busy" in m for m in busy)
        assert server.server.refused["busy"] == CYCLES // 10
        assert len(server.server.sessions) == CYCLES  # every conversation ended and was accounted for
        # Still answering: a full exchange after the abuse.
        got = asyncio.run(cycle(server, pages, 1, busy))
        assert got == 2
        growth = rss[CYCLES - 1] - rss[19]
        assert growth < 20, f"RSS grew {growth:.0f} MB over {CYCLES - 20} connections ({rss})"
        print(f"RSS after 20 connections {rss[19]:.0f} MB, after {CYCLES}: {rss[CYCLES - 1]:.0f} MB")
    finally:
        server.stop()
