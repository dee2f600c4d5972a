"""`moshi-mlx translate IN OUT`: speech translation with Hibiki, the translated voice to a wav and its text."""

from __future__ import annotations

import sys

from ..models.codec import BACKENDS
from ..weights.common import DTYPES
from .common import ArgumentParser, run

PROG = "moshi-mlx translate"
DEFAULT_HIBIKI = "kyutai/hibiki-1b-pytorch-bf16"


def configure_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Translate speech in an audio file with a Hibiki model, as torch moshi's run_inference does:\n"
        "conditioned on 'very_good' with classifier-free guidance (the model's own cfg_coef unless given),\n"
        "the input fed frame by frame, then an end-of-stream frame and silence until the model ends its\n"
        "translation. The translated text is printed as it comes.",
        epilog="examples:\n"
        "  moshi-mlx translate french.wav english.wav\n"
        "  moshi-mlx translate talk.mp3 out.wav --text-out out.txt --cfg-coef 2\n"
        "  moshi-mlx translate --mic                    # live: microphone -> speakers, text printed",
    )
    parser.add_argument("input", nargs="?", default=None, help="the audio file to translate (or --mic)")
    parser.add_argument("output", nargs="?", default=None, help="the wav file to write the translated voice to")
    parser.add_argument("--mic", action="store_true",
                        help="translate live: microphone in, the translated voice to the speakers (use headphones), "
                        "until Ctrl-C or --duration")
    parser.add_argument("--input-device", default=None, help="with --mic: the microphone (index or name)")
    parser.add_argument("--output-device", default=None, help="with --mic: the speaker (index or name)")
    parser.add_argument("--duration", type=float, default=None, help="with --mic: stop after this many seconds")
    parser.add_argument("--text-out", default=None, help="also write the translated text to this file")
    parser.add_argument("--model", default=DEFAULT_HIBIKI, help="a Hibiki model: Hugging Face repo, folder or weights file")
    parser.add_argument("--cfg-coef", type=float, default=None,
                        help="classifier-free guidance strength (default: the model's lm_gen_config, else 1)")
    parser.add_argument("--max-tail", type=float, default=30.0,
                        help="seconds of silence fed after the input at most while waiting for the end")
    parser.add_argument("--mimi-backend", choices=BACKENDS, default=None, help="Mimi codec implementation")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="LM dtype (default: the checkpoint's)")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the samplers")
    return parser


def _translate(args) -> None:
    import numpy as np

    from ..errors import InvalidArgument

    from ..audio.io import read_audio, write_wav
    from ..audio.translate import Translator, check_hibiki
    from ..files import atomic_write
    from ..sampling import SamplingParams
    from ..weights.common import parse_dtype
    from ..weights.pretrained import load_pretrained

    if args.mic:
        if args.input is not None or args.output is not None or args.text_out is not None:
            raise InvalidArgument("--mic translates live to the speakers: give no input/output file nor --text-out")
        if args.duration is not None and not args.duration > 0:
            raise InvalidArgument(f"--duration must be a positive number of seconds, got {args.duration}")
        return _translate_live(args)
    if args.input is None or args.output is None:
        raise InvalidArgument("give an input audio file and an output wav (or --mic)")
    if args.input_device is not None or args.output_device is not None or args.duration is not None:
        raise InvalidArgument("--input-device, --output-device and --duration go with --mic")
    pretrained = load_pretrained(args.model, args.mimi_backend, parse_dtype(args.dtype))
    check_hibiki(pretrained.lm)  # a wrong model type fails before the audio is read
    pcm = read_audio(args.input)
    translator = Translator(pretrained.lm, pretrained.mimi, pretrained.tokenizer, SamplingParams(seed=args.seed),
                            args.cfg_coef, args.max_tail)
    voice, text = [], []
    for frame in translator.frames(pcm):
        voice.append(frame.pcm)
        text.append(frame.text)
        print(frame.text, end="", flush=True)
    print()
    write_wav(args.output, np.concatenate(voice) if voice else np.zeros(0, np.float32))
    if args.text_out is not None:
        with atomic_write(args.text_out) as f:
            f.write("".join(text).strip() + "\n")


def _device(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def _translate_live(args) -> None:
    """Microphone -> Hibiki -> speakers through the full-duplex loop of `chat` (a Hibiki `LmGen` with its
    conditioning and guidance in a `Conversation`), the translated text printed as it comes."""
    import signal
    import threading

    from ..audio.chat import chat
    from ..audio.conversation import Conversation
    from ..audio.devices import check_devices
    from ..audio.translate import Translator, check_hibiki
    from ..sampling import SamplingParams
    from ..weights.common import parse_dtype
    from ..weights.pretrained import load_pretrained

    devices = check_devices(_device(args.input_device), _device(args.output_device))  # before the model loads
    pretrained = load_pretrained(args.model, args.mimi_backend, parse_dtype(args.dtype))
    check_hibiki(pretrained.lm)
    translator = Translator(pretrained.lm, pretrained.mimi, pretrained.tokenizer, SamplingParams(seed=args.seed),
                            args.cfg_coef)
    conversation = Conversation(translator.lm_gen, pretrained.mimi, pretrained.tokenizer.streaming())
    terminated = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: terminated.set())
    try:
        stats = chat(conversation, args.duration, *devices, should_stop=terminated.is_set,
                     on_listening=lambda: print("Translating what the microphone hears (Ctrl-C to stop).",
                                                file=sys.stderr, flush=True))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(stats.summary(), file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args = configure_parser().parse_args(argv)
    run(PROG, lambda: _translate(args))


if __name__ == "__main__":
    main()
