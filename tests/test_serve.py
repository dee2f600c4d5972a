"""`moshi-mlx serve` over Kyutai's websocket protocol (`rust/protocol.md`), with the tiny model:
a Python client sends Ogg/Opus speech in real time and checks what comes back; busy, bad input,
cross-origin and disconnects are refused or survived cleanly."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from contextlib import redirect_stderr
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import sphn
from serve_support import FRAME, RunningServer, ogg_pages, parse_handshake, tiny_conversation

from moshi_mlx.audio.conversation import FrameResult
from moshi_mlx.cli.main import main as cli_main
from moshi_mlx.sampling import SamplingParams
from moshi_mlx.serve.worker import ModelWorker
from moshi_mlx.weights.tiny import make_tiny_model

SPEECH = Path(__file__).resolve().parent / "assets" / "speech_24k.wav"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("serve") / "tiny-moshi")


@pytest.fixture(scope="module")
def server(folder):
    # No drops here (these tests compare codes and answers, not timing, on a shared 2-core machine);
    # test_the_worker_drops_and_counts_frames_when_behind covers the real-time policy.
    running = RunningServer(tiny_conversation(folder, record=True), idle_timeout=2.0, max_message_bytes=64 * 1024,
                            max_backlog=10_000)
    yield running
    running.stop()


def speech(seconds: float) -> np.ndarray:
    pcm = sphn.read(str(SPEECH), sample_rate=24000)[0][0]
    return pcm[: int(seconds * 24000)]


async def talk(url: str, pages: list[bytes], headers: dict | None = None) -> list[bytes]:
    """Sends each page as an audio message every 80 ms (real time) and listens until one audio
    message per page came back (30 s at most); returns every message received, handshake first."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, headers=headers) as ws:
            got = [await ws.receive_bytes(timeout=30)]
            answered = asyncio.Event()

            async def receive() -> None:
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        got.append(message.data)
                        if sum(m[0] == 1 for m in got) >= len(pages):
                            answered.set()

            task = asyncio.ensure_future(receive())
            start = time.monotonic()
            for i, page in enumerate(pages):
                await ws.send_bytes(b"\x01" + page)
                await asyncio.sleep(max(0.0, start + 0.08 * (i + 1) - time.monotonic()))
            try:
                await asyncio.wait_for(answered.wait(), 30)
            except asyncio.TimeoutError:
                pass  # the caller's assertions say what is missing
            await asyncio.sleep(0.05)  # the text of the last frame follows its audio
            await ws.close()
            await task
    return got


def decode(messages: list[bytes]) -> np.ndarray:
    reader = sphn.OpusStreamReader(24000)
    parts = [reader.append_bytes(m[1:]) for m in messages if m[0] == 1]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def test_protocol_round_trip_matches_direct_encoding(server, folder):
    pages = ogg_pages(speech(3.2))
    server.worker.base.mimi.codes.clear()
    got = asyncio.run(talk(server.ws_url, pages))
    assert parse_handshake(got[0]) == (0, 0)
    assert {m[0] for m in got[1:]} <= {1, 2}, "only audio and text after the handshake"
    assert server.idle()
    stats = server.server.sessions[-1]
    assert stats.frames_in == len(pages) and stats.frames_dropped_in == 0, stats.summary()
    # One 80 ms frame of Moshi's audio per frame sent (silence while the delays fill).
    assert decode(got).shape[0] == len(pages) * FRAME
    text = "".join(m[1:].decode("utf-8") for m in got if m[0] == 2)
    assert text.strip(), "the model's text reached the client"
    # The server's user-side codes are those of encoding the same Opus-decoded speech directly.
    reader = sphn.OpusStreamReader(24000)
    heard = np.concatenate([reader.append_bytes(p) for p in pages])
    direct = tiny_conversation(folder).mimi
    direct.reset()
    expected = [np.array(direct.encode_step(heard[None, None, i:i + FRAME])) for i in range(0, len(pages) * FRAME, FRAME)]
    served = server.worker.base.mimi.codes
    assert len(served) == len(expected)
    for i, (a, b) in enumerate(zip(served, expected)):
        np.testing.assert_array_equal(a, b, err_msg=f"frame {i}")


def test_each_connection_is_a_fresh_conversation(server):
    pages = ogg_pages(speech(1.2))
    url = server.ws_url + "?seed=7&text_temperature=0.7&text_topk=25&audio_seed=1&pad_mult=0"
    first = asyncio.run(talk(url, pages))
    second = asyncio.run(talk(url, pages))
    assert [m for m in first if m[0] == 2] == [m for m in second if m[0] == 2]
    np.testing.assert_array_equal(decode(first), decode(second))
    assert decode(first).shape[0] == len(pages) * FRAME


async def _second_client_is_busy(server) -> tuple[bytes, int, list[bytes]]:
    pages = ogg_pages(speech(1.0))
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.ws_url) as first:
            assert (await first.receive_bytes(timeout=30))[0] == 0
            async with http.ws_connect(server.ws_url) as second:
                refused = await second.receive_bytes(timeout=10)
                closing = await second.receive(timeout=10)
            # The first conversation goes on.
            for page in pages:
                await first.send_bytes(b"\x01" + page)
            answers = [await first.receive_bytes(timeout=10) for _ in range(3)]
    return refused, closing.data, answers


def test_a_second_client_gets_busy_and_the_first_goes_on(server):
    refused, code, answers = asyncio.run(_second_client_is_busy(server))
    assert refused[0] == 5 and b"busy" in refused
    assert code == 1013
    assert answers[0][0] == 1


async def _exchange(server, messages: list, headers: dict | None = None, url: str | None = None):
    """Sends `messages` (bytes, or str for a text frame) after the handshake; returns what came back
    (kinds) and the close code."""
    kinds = []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url or server.ws_url, headers=headers) as ws:
            for m in messages:
                await (ws.send_str(m) if isinstance(m, str) else ws.send_bytes(m))
            while True:
                message = await ws.receive(timeout=10)
                if message.type != aiohttp.WSMsgType.BINARY:
                    return kinds, ws.close_code, message
                kinds.append(message.data[:1] + (message.data[1:] if message.data[0] == 5 else b""))


def test_bad_input_is_refused_cleanly_and_the_server_goes_on(server):
    page = ogg_pages(speech(0.4))
    # Unknown kinds, client-only kinds, empty and text frames are discarded: audio still flows after them.
    kinds, code, _ = asyncio.run(_exchange(server, [b"", b"\x09junk", b"\x03\x00", b"\x06", b"\x00\x00", "hello",
                                                    b"\x01" + page[0], b"\x01" + page[1]]))
    assert kinds[0] == b"\x00" and b"\x01" in kinds
    assert server.idle()
    # Garbage as audio: an error message, then a close (the Opus stream cannot recover).
    kinds, code, _ = asyncio.run(_exchange(server, [b"\x01" + b"garbage" * 20]))
    assert code == 1007 and any(k.startswith(b"\x05malformed Ogg/Opus") for k in kinds)
    # Over the size cap: closed with 1009 (message too big).
    kinds, code, _ = asyncio.run(_exchange(server, [b"\x01" + bytes(65 * 1024)]))
    assert code == 1009
    # A bad query value: an error naming it, no conversation.
    kinds, code, _ = asyncio.run(_exchange(server, [], url=server.ws_url + "?text_temperature=hot"))
    assert any(b"text_temperature" in k for k in kinds) and code == 1008
    # Silent for longer than the idle timeout: told so and closed.
    kinds, code, _ = asyncio.run(_exchange(server, []))
    assert code == 1008 and any(k.startswith(b"\x05no message") for k in kinds)
    assert server.idle()
    # Still answering.
    got = asyncio.run(talk(server.ws_url, page))
    assert got[0][0] == 0 and decode(got).shape[0] == len(page) * FRAME


def test_cross_origin_and_foreign_host_are_refused(server):
    port = server.url.rsplit(":", 1)[1].strip("/")
    for headers in ({"Origin": "http://evil.example"}, {"Origin": f"http://localhost.evil.example:{port}"},
                    {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            asyncio.run(_exchange(server, [], headers=headers))
        assert e.value.status == 403, headers
    # The page's own origin is accepted.
    kinds, _, _ = asyncio.run(_exchange(server, [b"\x01" + ogg_pages(speech(0.2))[0]],
                                        headers={"Origin": f"http://localhost:{port}"}))
    assert kinds[0] == b"\x00"
    assert server.server.refused["origin"] >= 2 and server.server.refused["host"] >= 1


def test_a_client_leaving_mid_message_frees_the_model_at_once(server):
    page = ogg_pages(speech(0.4))[0]

    async def leave() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.ws_url) as ws:
                await ws.receive_bytes(timeout=30)
                await ws.send_bytes(b"\x01" + page[: len(page) // 2])  # half an Ogg page

    asyncio.run(leave())
    assert server.idle(timeout=2.0)


def test_serve_page_and_cli_errors(server, tmp_path):
    async def get(path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + path) as r:
                return r.status, (await r.read()).decode("utf-8", errors="replace")

    status, html = asyncio.run(get(""))
    assert status == 200 and "api/chat" in asyncio.run(get("app.js"))[1] and "<html" in html.lower()
    assert asyncio.run(get("../../../../etc/passwd"))[0] in (403, 404)
    # Works offline: nothing is fetched from another site (links to read are fine, scripts are not).
    for name in ("index.html", "app.js", "style.css", "io-worklet.js"):
        status, body = asyncio.run(get(name))
        assert status == 200 and "http://" not in body and "https://" not in body, name
    assert asyncio.run(get("vendor/decoderWorker.min.wasm"))[0] == 200

    def cli(*argv: str) -> tuple[int, str]:
        err = io.StringIO()
        with redirect_stderr(err):
            try:
                cli_main(["serve", *argv])
            except SystemExit as e:
                return e.code, err.getvalue()
        return 0, err.getvalue()

    code, err = cli("--ssl", str(tmp_path), "--no-browser")
    assert code == 2 and "cert.pem" in err and len(err.strip().splitlines()) == 1
    code, err = cli("--static", str(tmp_path), "--no-browser")
    assert code == 2 and "index.html" in err
    code, err = cli("--port", "70000")
    assert code == 2 and "--port" in err


def test_the_command_serves_until_sigterm(folder):
    """`moshi-mlx serve` end to end: prints the page's URL once ready, answers, stops cleanly on SIGTERM."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import urllib.request

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moshi_mlx", "serve", "--model", str(folder), "--mimi-backend", "mlx",
         "--port", "0", "--no-browser"],
        stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "Moshi is ready" in line:
                break
        url = re.search(r"http://localhost:\d+/", "".join(lines))
        assert url, lines
        with urllib.request.urlopen(url.group(0), timeout=10) as r:
            assert r.status == 200 and b"Moshi" in r.read()
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 0, rest
        assert "Stopped." in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class SlowConversation:
    """Takes 30 ms per frame and answers each with its own first sample as text."""

    frame_size = FRAME

    def materialize(self) -> None:
        pass

    def warmup(self, frames: int) -> None:
        pass

    def step(self, pcm: np.ndarray) -> FrameResult:
        time.sleep(0.03)
        return FrameResult(str(int(pcm[0])), 0, np.full(FRAME, pcm[0], np.float32))


def test_the_worker_drops_and_counts_frames_when_behind():
    worker = ModelWorker(SlowConversation(), max_backlog=3, fresh=lambda sampling: SlowConversation())
    worker.start()
    outputs: list = []
    done = threading.Event()

    def sink(output) -> None:
        outputs.append(output)
        if len(outputs) == 20:
            done.set()

    try:
        session = worker.begin(SamplingParams(), sink).result(timeout=10)
        for i in range(20):  # 1.6 s of audio at once: a model at 30 ms per frame cannot take it all in time
            worker.push(session, np.full(FRAME, i, np.float32))
        assert done.wait(10)
        stats = worker.end(session)
    finally:
        worker.stop()
    dropped = [o for o in outputs if o.dropped]
    kept = [int(o.result.text) for o in outputs if not o.dropped]
    assert 0 < len(dropped) == stats.frames_dropped_in and len(kept) == stats.frames_processed
    assert stats.frames_in == 20 == len(dropped) + len(kept)  # one output per frame, in order
    assert kept == sorted(kept) and kept[-1] == 19  # the newest frames are the ones kept


def test_ssl_serves_https_and_wss(folder, tmp_path):
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    running = RunningServer(tiny_conversation(folder), ssl_dir=tmp_path, max_backlog=10_000)
    try:
        assert running.url.startswith("https://localhost:") and running.ws_url.startswith("wss://")
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))

        async def exchange() -> list[bytes]:
            async with aiohttp.ClientSession() as http:
                async with http.get(running.url, ssl=context) as r:
                    assert r.status == 200
                async with http.ws_connect(running.ws_url, ssl=context) as ws:
                    got = [await ws.receive_bytes(timeout=30)]
                    await ws.send_bytes(b"\x01" + ogg_pages(speech(0.2))[0])
                    got.append(await ws.receive_bytes(timeout=30))
                    return got

        got = asyncio.run(exchange())
        assert got[0][0] == 0 and got[1][0] == 1
    finally:
        running.stop()
