"""`moshi-mlx speak "text" OUT.wav --voice ...`: text to speech with Kyutai TTS, the wav written as it is made."""

from __future__ import annotations

import sys

from ..models.codec import BACKENDS
from ..weights.common import DTYPES
from .common import ArgumentParser, run

PROG = "moshi-mlx speak"
DEFAULT_VOICE = "expresso/ex03-ex01_happy_001_channel1_334s.wav"


def configure_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Say a text with a Kyutai TTS model in a given voice, as torch moshi's run_tts does (the\n"
        "model's word state machine, voice conditioning, CFG-distilled guidance). The wav grows as the\n"
        "audio is made and is a valid file at every moment. `<break time=\"0.5s\"/>` in the text inserts a pause.",
        epilog="examples:\n"
        "  moshi-mlx speak \"Hello, how are you?\" hello.wav\n"
        "  moshi-mlx speak \"Bonjour !\" out.wav --voice ./my_voice.safetensors --cfg-coef 3\n"
        "  echo \"Some long text.\" | moshi-mlx speak - out.wav --model ./tiny-tts --voice ./tiny-tts/voice.safetensors",
    )
    parser.add_argument("text", help="the text to say ('-' reads it from standard input)")
    parser.add_argument("output", help="the wav file to write (24 kHz mono)")
    parser.add_argument("--voice", default=DEFAULT_VOICE,
                        help="a voice: a local .safetensors embedding file, or a name in --voice-repo "
                        f"(default: {DEFAULT_VOICE})")
    parser.add_argument("--voice-repo", default="kyutai/tts-voices", help="Hugging Face repo of the named voices")
    parser.add_argument("--model", default="kyutai/tts-1.6b-en_fr",
                        help="a Kyutai TTS model: Hugging Face repo, folder or weights file")
    parser.add_argument("--cfg-coef", type=float, default=2.0,
                        help="guidance strength the model is conditioned on (one of the values it was distilled for)")
    parser.add_argument("--temp", type=float, default=0.6, help="sampling temperature of text and audio (0: greedy)")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the samplers")
    parser.add_argument("--padding-between", type=int, default=1, help="frames of padding forced between words")
    parser.add_argument("--max-padding", type=int, default=8, help="frames of padding in a row at most")
    parser.add_argument("--initial-padding", type=int, default=2, help="frames of padding forced at the start")
    parser.add_argument("--final-padding", type=int, default=4, help="frames generated after the last word's end")
    parser.add_argument("--nq", type=int, default=None,
                        help="generate only this many audio codebooks: faster, coarser audio (default: all; "
                        "Kyutai suggests 8 to 32)")
    parser.add_argument("--padding-bonus", type=float, default=0.0,
                        help="added to the padding logit: speech speed, slower when > 0 (Kyutai: -2 to 2)")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="stop after this much audio at most")
    parser.add_argument("--mimi-backend", choices=BACKENDS, default=None, help="Mimi codec implementation")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="LM dtype (default: the checkpoint's)")
    return parser


def _speak(args) -> None:
    from ..audio.speak import TtsGen, check_tts, prepare_script, voice_path
    from ..audio.wav import WavWriter
    from ..errors import InvalidArgument
    from ..models.tts import load_voice
    from ..weights.common import parse_dtype
    from ..weights.pretrained import load_pretrained

    text = sys.stdin.read() if args.text == "-" else args.text
    for name in ("padding_between", "max_padding", "initial_padding", "final_padding"):
        if getattr(args, name) < 0:
            raise InvalidArgument(f"--{name.replace('_', '-')} must be >= 0")
    if args.temp < 0 or args.max_seconds <= 0:
        raise InvalidArgument("--temp must be >= 0 and --max-seconds > 0")
    pretrained = load_pretrained(args.model, args.mimi_backend, parse_dtype(args.dtype))
    settings = check_tts(pretrained.lm)  # a wrong model type fails before anything else
    entries = prepare_script(pretrained.tokenizer, pretrained.lm, settings, [text], args.padding_between)
    voices = [load_voice(voice_path(args.voice, settings, args.voice_repo))] if settings.multi_speaker else []
    gen = TtsGen(pretrained.lm, [voices], cfg_coef=args.cfg_coef, temp=args.temp, seed=args.seed,
                 max_padding=args.max_padding, initial_padding=args.initial_padding,
                 final_padding=args.final_padding, max_steps=int(args.max_seconds * 12.5) + settings.delay_steps,
                 padding_bonus=args.padding_bonus, n_q=args.nq)
    writer = WavWriter(args.output, 24_000)
    try:
        for chunk in gen.pcm(entries, pretrained.mimi):
            writer.write(chunk)
    finally:
        writer.close()
    if gen.states[0].end_step is None:
        print(f"{PROG}: stopped at --max-seconds before the end of the text", file=sys.stderr)
    words = " ".join(f"{w}@{t:.2f}s" for w, t in gen.transcript)
    print(f"wrote {args.output} ({writer.frames / 24_000:.2f} s): {words}")


def main(argv: list[str] | None = None) -> None:
    args = configure_parser().parse_args(argv)
    run(PROG, lambda: _speak(args))


if __name__ == "__main__":
    main()
