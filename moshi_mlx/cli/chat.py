"""`moshi-mlx chat`: talk with Moshi through the microphone and speakers (full duplex; Ctrl-C ends).

Use headphones: like Kyutai's CLI, this does no echo cancellation.
"""

from __future__ import annotations

import sys

from .common import ArgumentParser, run
from .loading import add_model_arguments, load_conversation


def _device(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def configure_parser() -> ArgumentParser:
    p = ArgumentParser(prog="moshi-mlx chat", description=__doc__)
    add_model_arguments(p)
    p.add_argument("--input-device", default=None, help="microphone (index or name; see --list-devices)")
    p.add_argument("--output-device", default=None, help="speaker (index or name)")
    p.add_argument("--list-devices", action="store_true", help="print the audio devices and exit")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--stats", action="store_true", help="print frame accounting and step latency at the end")
    return p


def main(argv: list[str] | None = None) -> None:
    args = configure_parser().parse_args(argv)

    def go() -> None:
        from ..audio.chat import chat
        from ..audio.devices import list_devices

        if args.list_devices:
            print(list_devices())
            return
        conversation = load_conversation(args)
        print("Moshi is listening (Ctrl-C to stop).", file=sys.stderr)
        stats = chat(conversation, args.duration, _device(args.input_device), _device(args.output_device))
        if args.stats:
            print(stats.summary(), file=sys.stderr)

    run("moshi-mlx chat", go)
