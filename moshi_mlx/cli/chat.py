"""`moshi-mlx chat`: talk with Moshi through the microphone and speakers (full duplex; Ctrl-C ends).

Use headphones: like Kyutai's CLI, this does no echo cancellation.

The microphone and speaker are checked (they exist and take 24 kHz mono) before the model loads;
"Moshi is listening" appears once they are open. Ctrl-C is the normal way to end a chat: it stops
cleanly, prints the --stats and exits 0 (Ctrl-C before the chat started exits 130); SIGTERM stops
as cleanly and exits 143. No usable device: one line saying which and what to do, exit 2.
`--list-devices` with none found is the same error (exit 2): chat could not run either.
"""

from __future__ import annotations

import signal
import sys
import threading

from .common import ArgumentParser, run
from .loading import add_model_arguments, load_conversation

EXIT_SIGTERM = 143


def _device(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def configure_parser() -> ArgumentParser:
    p = ArgumentParser(prog="moshi-mlx chat", description=__doc__)
    add_model_arguments(p)
    devices = p.add_argument_group("audio devices (24 kHz mono; checked before the model loads)")
    devices.add_argument(
        "--input-device", default=None,
        help="microphone: index or part of the name from --list-devices (default: the system's default input)",
    )
    devices.add_argument(
        "--output-device", default=None,
        help="speaker: index or part of the name from --list-devices (default: the system's default output)",
    )
    devices.add_argument(
        "--list-devices", action="store_true",
        help="print the audio devices (inputs, outputs, defaults) and exit; exit 2 if there are none",
    )
    p.add_argument("--duration", type=float, default=None, help="stop after listening this many seconds")
    p.add_argument(
        "--stats", action="store_true",
        help="at the end (also after Ctrl-C), print the listening time, the frame accounting (frames in = "
        "processed + dropped because the model was behind + pending at stop) and the step latency",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    args = configure_parser().parse_args(argv)
    if args.duration is not None and not args.duration > 0:
        configure_parser().error(f"--duration must be a positive number of seconds, got {args.duration}")

    def go() -> None:
        from ..audio.chat import chat
        from ..audio.devices import check_devices, list_devices

        if args.list_devices:
            print(list_devices())
            return
        # Devices first: a missing microphone should not cost a model download and load.
        input_device, output_device = check_devices(_device(args.input_device), _device(args.output_device))
        conversation = load_conversation(args)
        terminated = threading.Event()  # SIGTERM: stop as cleanly as Ctrl-C does
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: terminated.set())
        try:
            stats = chat(
                conversation, args.duration, input_device, output_device, should_stop=terminated.is_set,
                on_listening=lambda: print("Moshi is listening (Ctrl-C to stop).", file=sys.stderr, flush=True),
            )
        finally:
            signal.signal(signal.SIGTERM, previous)
        how = "Ctrl-C" if stats.interrupted else "SIGTERM" if terminated.is_set() else None
        if how is not None:
            print(f"Stopped ({how}) after {stats.seconds:.1f} s of listening.", file=sys.stderr)
        if args.stats:
            print(stats.summary(), file=sys.stderr)
        if terminated.is_set() and not stats.interrupted:
            sys.exit(EXIT_SIGTERM)

    run("moshi-mlx chat", go)
