"""The web server: our page at `/`, Kyutai's websocket protocol at `/api/chat`, one conversation at a time.

Security: it binds 127.0.0.1 unless told otherwise; a websocket whose Origin is not the page's own
host is refused (another site open in the same browser cannot drive the model or hear its
microphone); on a loopback address, requests for any Host but localhost/127.0.0.1/[::1] are refused
(DNS rebinding); messages are capped at `max_message_bytes`; malformed audio, unknown kinds and
truncated messages are answered with an error message or discarded, never a crash.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import signal
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from aiohttp import web

from ..errors import InvalidArgument
from ..sampling import SamplingParams
from . import protocol
from .session import CLOSE_TRY_AGAIN_LATER, SessionLimits, run_session
from .worker import ModelWorker

log = logging.getLogger("moshi_mlx.serve")
STATIC_DIR = Path(__file__).resolve().parent / "static"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024  # an Ogg page is at most ~64 KiB; a client sends 40-80 ms per message


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8998
    static: Path | None = STATIC_DIR  # None: no page, only the websocket
    ssl_dir: Path | None = None  # holds cert.pem and key.pem
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    limits: SessionLimits = field(default_factory=SessionLimits)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _hostname(host_header: str) -> str:
    """`example.org:8998` -> `example.org`; `[::1]:8998` -> `::1`."""
    return (urlsplit(f"//{host_header}").hostname or "").lower()


class MoshiServer:
    """The aiohttp application around one `ModelWorker`."""

    def __init__(self, worker: ModelWorker, defaults: SamplingParams, options: ServerOptions):
        self.worker = worker
        self.defaults = defaults
        self.options = options
        self.busy = False
        self.sessions: collections.deque = collections.deque(maxlen=1000)  # the last conversations' DuplexStats
        self.refused = {"busy": 0, "origin": 0, "host": 0}
        self.loopback_only = is_loopback(options.host)
        if options.static is not None and not (Path(options.static) / "index.html").is_file():
            raise InvalidArgument(f"--static {options.static}: no index.html in that folder")

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._check_host])
        app.router.add_get("/api/chat", self._chat)
        if self.options.static is not None:
            static = Path(self.options.static)

            async def index(request: web.Request) -> web.FileResponse:
                return web.FileResponse(static / "index.html")

            app.router.add_get("/", index)
            app.router.add_static("/", static, follow_symlinks=False)
        return app

    @web.middleware
    async def _check_host(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if self.loopback_only and _hostname(request.host) not in LOOPBACK_NAMES:
            self.refused["host"] += 1
            return web.Response(status=403, text=f"host {request.host!r} is not served here (use localhost)\n")
        return await handler(request)

    def _origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser (browsers always send it on websockets)
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc.lower() == request.host.lower()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        peer = request.remote or "?"
        if not self._origin_allowed(request):
            self.refused["origin"] += 1
            log.warning("%s: refused a websocket from origin %r (this server is %r)", peer,
                        request.headers.get("Origin"), request.host)
            return web.Response(status=403, text="cross-origin websocket refused\n")
        ws = web.WebSocketResponse(max_msg_size=self.options.max_message_bytes)
        await ws.prepare(request)
        if self.busy:
            self.refused["busy"] += 1
            log.info("%s: refused: a conversation is already running", peer)
            try:
                await ws.send_bytes(protocol.error("busy: Moshi is already in a conversation, try again later"))
                await ws.close(code=CLOSE_TRY_AGAIN_LATER, message=b"busy")
            except (ConnectionError, RuntimeError):
                pass
            return ws
        self.busy = True
        try:
            log.info("%s: conversation starts", peer)
            stats = await run_session(ws, dict(request.query), self.worker, self.defaults, self.options.limits, peer)
            if stats is not None:
                self.sessions.append(stats)
        finally:
            self.busy = False
        return ws

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.options.ssl_dir is None:
            return None
        folder = Path(self.options.ssl_dir)
        cert, key = folder / "cert.pem", folder / "key.pem"
        for path in (cert, key):
            if not path.is_file():
                raise InvalidArgument(f"--ssl {folder}: missing {path.name} (the folder holds cert.pem and key.pem)")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(certfile=str(cert), keyfile=str(key))
        except ssl.SSLError as e:
            raise InvalidArgument(f"--ssl {folder}: cannot load cert.pem/key.pem: {e}") from None
        return context

    async def start(self) -> tuple[web.AppRunner, str]:
        """Starts listening; returns the runner (for `cleanup()`) and the page's URL (actual port)."""
        context = self.ssl_context()
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.options.host, self.options.port, ssl_context=context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        port = runner.addresses[0][1]
        host = self.options.host
        shown = "localhost" if is_loopback(host) else (f"[{host}]" if ":" in host else host)
        return runner, f"{'https' if context else 'http'}://{shown}:{port}/"


def serve(
    worker: ModelWorker, defaults: SamplingParams, options: ServerOptions,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Runs the server until SIGTERM (returns) or Ctrl-C (KeyboardInterrupt propagates), each after a
    clean shutdown: connections closed, the port released."""
    server = MoshiServer(worker, defaults, options)

    async def main() -> None:
        runner, url = await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            pass
        try:
            if on_ready is not None:
                on_ready(url)
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
