"""`moshi-mlx run INPUT OUTPUT`: Moshi answers a recorded audio file; writes its voice and prints its text."""

from __future__ import annotations

import sys
from pathlib import Path

from ..audio.run_file import run_file
from .common import ArgumentParser, run
from .loading import add_model_arguments, load_conversation


def configure_parser() -> ArgumentParser:
    p = ArgumentParser(prog="moshi-mlx run", description=__doc__)
    p.add_argument("input", help="the user's audio (wav/mp3/ogg/flac; any rate, mono or stereo)")
    p.add_argument("output", help="wav file for Moshi's voice (24 kHz mono, time-aligned with the input)")
    p.add_argument("--text-out", default=None, help="also write Moshi's text to this file")
    add_model_arguments(p)
    return p


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    args = configure_parser().parse_args(argv)

    def go() -> None:
        conversation = load_conversation(args)
        _, text = run_file(conversation, args.input, args.output, on_text=_print)
        print()
        if args.text_out:
            path = Path(args.text_out)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text + "\n")
            tmp.replace(path)

    run("moshi-mlx run", go)
