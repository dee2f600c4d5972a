"""`moshi-mlx transcribe IN`: speech to text with Kyutai STT, words printed as they are recognised."""

from __future__ import annotations

import signal
import sys

from ..models.codec import BACKENDS
from ..weights.common import DTYPES
from .common import ArgumentParser, run

PROG = "moshi-mlx transcribe"
DEFAULT_STT = "kyutai/stt-1b-en_fr"
FORMATS = ("text", "srt", "vtt", "json")


def configure_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Transcribe an audio file (wav, mp3, ogg, flac) with a Kyutai STT model, as torch moshi's\n"
        "run_inference does (its stt_config padding, greedy text). Word timestamps come from when the model\n"
        "writes each word, less the model's audio delay. Output: plain text, SRT or VTT subtitles, or JSON.",
        epilog="examples:\n"
        "  moshi-mlx transcribe talk.wav                          # text on stdout, word by word\n"
        "  moshi-mlx transcribe talk.wav --format srt -o talk.srt  # subtitles\n"
        "  moshi-mlx transcribe talk.mp3 --json > talk.json        # words with start/end seconds, end of turns\n"
        "  moshi-mlx transcribe --mic                              # live from the microphone until Ctrl-C\n"
        "  moshi-mlx make-tiny ./tiny-stt --kind stt && moshi-mlx transcribe talk.wav --model ./tiny-stt  # offline",
    )
    parser.add_argument("input", nargs="?", default=None, help="the audio file (or --mic)")
    parser.add_argument("--mic", action="store_true",
                        help="transcribe the microphone live, word by word, until Ctrl-C (or --duration)")
    parser.add_argument("--input-device", default=None, help="with --mic: the microphone (index or name; "
                        "`moshi-mlx chat --list-devices` lists them)")
    parser.add_argument("--duration", type=float, default=None, help="with --mic: stop after this many seconds")
    parser.add_argument("--model", default=DEFAULT_STT, help="an STT model: Hugging Face repo, folder or weights file")
    parser.add_argument("--format", choices=FORMATS, default="text", help="output format")
    parser.add_argument("--json", action="store_true", help="same as --format json")
    parser.add_argument("--timestamps", action="store_true", help="with --format text: [start-end] after each word")
    parser.add_argument("-o", "--output", default=None, help="write to this file (default: stdout)")
    parser.add_argument("--mimi-backend", choices=BACKENDS, default=None, help="Mimi codec implementation")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="LM dtype (default: the checkpoint's)")
    parser.add_argument("--temp", type=float, default=0.0, help="text temperature (0: greedy)")
    parser.add_argument("--seed", type=int, default=None, help="random seed when --temp > 0")
    return parser


def _transcribe(args) -> None:
    from ..audio.io import read_audio
    from ..audio.microphone import Microphone
    from ..errors import InvalidArgument
    from ..audio.transcribe import Transcriber, format_words, stt_settings, turn_ends
    from ..files import atomic_write
    from ..weights.common import parse_dtype
    from ..weights.pretrained import load_pretrained

    fmt = "json" if args.json else args.format
    if (args.input is None) == (not args.mic):
        raise InvalidArgument("give an audio file or --mic (one of them)")
    if not args.mic and (args.input_device is not None or args.duration is not None):
        raise InvalidArgument("--input-device and --duration go with --mic")
    if args.duration is not None and not args.duration > 0:
        raise InvalidArgument(f"--duration must be a positive number of seconds, got {args.duration}")
    mic = Microphone(_device(args.input_device)) if args.mic else None  # a missing microphone fails first
    pretrained = load_pretrained(args.model, args.mimi_backend, parse_dtype(args.dtype))
    stt_settings(pretrained.lm)  # a wrong model type fails before the audio is read
    pcm = None if mic else read_audio(args.input)
    words = []
    live = fmt == "text" and not args.timestamps and args.output is None
    transcriber = Transcriber(pretrained.lm, pretrained.mimi, pretrained.tokenizer, args.temp, args.seed)
    if mic is not None:  # Ctrl-C ends the recording; the words still in the model are written out
        previous = signal.signal(signal.SIGINT, lambda signum, frame: mic.stop.set())
        print("Listening (Ctrl-C to stop).", file=sys.stderr, flush=True)
    try:
        for word in transcriber.live_words(mic.chunks(args.duration)) if mic else transcriber.words(pcm):
            words.append(word)
            if live:
                print(("" if len(words) == 1 else " ") + word.text, end="", flush=True)
    finally:
        if mic is not None:
            signal.signal(signal.SIGINT, previous)
    if live:
        print()
        return
    ends = turn_ends(transcriber.turn_probability) if transcriber.turn_probability else None
    text = format_words(words, fmt, args.timestamps, ends)
    if args.output is None:
        sys.stdout.write(text)
    else:
        with atomic_write(args.output) as f:
            f.write(text)


def _device(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def main(argv: list[str] | None = None) -> None:
    args = configure_parser().parse_args(argv)
    run(PROG, lambda: _transcribe(args))


if __name__ == "__main__":
    main()
