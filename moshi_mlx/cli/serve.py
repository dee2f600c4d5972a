"""`moshi-mlx serve`: talk with Moshi in the browser (echo cancellation included: no headphones needed).

Serves our page at http://localhost:8998/ and Kyutai's websocket protocol at /api/chat, so Kyutai's own
web client works too (--static DIR, its built `dist` folder). One conversation at a time: each
connection starts a fresh one; a second client is told "busy". The model runs on its own thread in
real time: when it falls behind, the oldest input frames are dropped and counted (the log line at
the end of each conversation). Ctrl-C or SIGTERM stops the server (exit 0).

Security: binds 127.0.0.1 (this computer only) unless --host says otherwise; then the microphone
stream crosses the network, and browsers allow the microphone on a page that is not localhost only
over https (--ssl DIR with cert.pem and key.pem). Websockets from another site's page are refused.
"""

from __future__ import annotations

import logging
import sys
import webbrowser
from pathlib import Path

from .common import ArgumentParser, run
from .loading import add_model_arguments, load_conversation

PROG = "moshi-mlx serve"


def configure_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__)
    add_model_arguments(p)
    web = p.add_argument_group("web server")
    web.add_argument("--host", default="127.0.0.1",
                     help="address to listen on; 0.0.0.0 serves the whole network (use --ssl then)")
    web.add_argument("--port", type=int, default=8998, help="TCP port (0: any free port)")
    web.add_argument("--ssl", metavar="DIR", default=None,
                     help="serve https with DIR/cert.pem and DIR/key.pem (browsers need https for the "
                     "microphone on any host but localhost)")
    web.add_argument("--static", metavar="DIR", default=None,
                     help="serve this folder's index.html instead of our page (e.g. Kyutai's client `dist`); "
                     "'none': no page, only the websocket")
    web.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    web.add_argument("--idle-timeout", type=float, default=30.0,
                     help="hang up on a client that sends nothing for this many seconds (it holds the model)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = configure_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        configure_parser().error(f"--port must be in 0..65535, got {args.port}")
    if not args.idle_timeout > 0:
        configure_parser().error(f"--idle-timeout must be a positive number of seconds, got {args.idle_timeout}")

    def go() -> None:
        from ..serve.server import STATIC_DIR, MoshiServer, ServerOptions, is_loopback, serve
        from ..serve.session import SessionLimits
        from ..serve.worker import ModelWorker
        from .loading import sampling_params

        static = STATIC_DIR if args.static is None else None if args.static == "none" else Path(args.static)
        options = ServerOptions(host=args.host, port=args.port, static=static,
                                ssl_dir=Path(args.ssl) if args.ssl else None,
                                limits=SessionLimits(idle_timeout=args.idle_timeout))
        defaults = sampling_params(args)
        MoshiServer(None, defaults, options).ssl_context()  # bad --static/--ssl fail before the model loads
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
        if not is_loopback(args.host):
            print(f"{PROG}: warning: listening on {args.host}: the microphone stream of whoever connects crosses "
                  f"the network{'' if args.ssl else ' unencrypted (use --ssl DIR for https)'}", file=sys.stderr)
        conversation = load_conversation(args)
        worker = ModelWorker(conversation)
        print("Warming up the model...", file=sys.stderr, flush=True)
        worker.start()

        def ready(url: str) -> None:
            print(f"Moshi is ready: open {url} (Ctrl-C to stop).", file=sys.stderr, flush=True)
            if not args.no_browser and static is not None:
                webbrowser.open(url)

        try:
            serve(worker, defaults, options, on_ready=ready)
        except KeyboardInterrupt:  # the normal way to stop a server
            pass
        finally:
            worker.stop()
        print("Stopped.", file=sys.stderr)

    run(PROG, go)


if __name__ == "__main__":
    main()
