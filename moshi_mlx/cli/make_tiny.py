"""`moshi-mlx make-tiny OUT_DIR [--full-mimi]`: build a tiny random model folder to try everything offline."""

from __future__ import annotations

import time

from ..errors import InvalidArgument
from .common import ArgumentParser, run

PROG = "moshi-mlx make-tiny"


def configure_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Build a tiny random Moshi model folder in Kyutai's repo layout (a few MB, seconds, no\n"
        "download): every command and the Python API accept it as --model. Its answers are noise, not speech.",
        epilog="example:\n  moshi-mlx make-tiny ./tiny-moshi\n"
        "  moshi-mlx run question.wav answer.wav --model ./tiny-moshi\n"
        "  moshi-mlx make-tiny ./tiny-stt --kind stt && moshi-mlx transcribe talk.wav --model ./tiny-stt\n"
        "  moshi-mlx make-tiny ./tiny-tts --kind tts && "
        "moshi-mlx speak 'Hello there.' hello.wav --model ./tiny-tts --voice ./tiny-tts/voice.safetensors",
    )
    parser.add_argument("out_dir", help="output folder (must not exist or be empty)")
    parser.add_argument(
        "--full-mimi", action="store_true",
        help="a Mimi with the published architecture (385 MB, about a minute), which the rust backend "
        "can run too; default: a small Mimi that only --mimi-backend mlx runs",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of all the weights")
    parser.add_argument("--kind", choices=["moshi", "stt", "hibiki", "tts"], default="moshi",
                        help="moshi: the speech dialogue model; stt: a Kyutai STT-like model for `transcribe`; "
                        "hibiki: a Hibiki-like model for `translate`; tts: a Kyutai TTS-like model (with a voice file) for `speak`")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = configure_parser().parse_args(argv)

    def build() -> None:
        from ..weights.tiny import make_tiny_model
        from ..weights.tiny_family import make_tiny_hibiki, make_tiny_stt, make_tiny_tts

        start = time.perf_counter()
        if args.kind != "moshi" and args.full_mimi:
            raise InvalidArgument("--full-mimi is for --kind moshi")
        if args.kind == "stt":
            out = make_tiny_stt(args.out_dir, seed=args.seed)
        elif args.kind == "hibiki":
            out = make_tiny_hibiki(args.out_dir, seed=args.seed)
        elif args.kind == "tts":
            out = make_tiny_tts(args.out_dir, seed=args.seed)
        else:
            out = make_tiny_model(args.out_dir, full_mimi=args.full_mimi, seed=args.seed)
        print(f"wrote {out} in {time.perf_counter() - start:.1f} s")

    run(PROG, build)


if __name__ == "__main__":
    main()
