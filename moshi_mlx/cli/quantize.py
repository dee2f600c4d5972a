"""`moshi-mlx quantize SRC OUT_DIR --bits 4 --group-size 32`: quantize an unquantized LM checkpoint."""

from __future__ import annotations

from .common import ArgumentParser
from .convert import convert_from_args

PROG = "moshi-mlx quantize"


def configure_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Quantize a Moshi LM checkpoint (MLX affine; norms stay in floating point) into a new folder.",
    )
    parser.add_argument("src", help="weights file, folder, org/repo or hf://org/repo/file")
    parser.add_argument("out_dir", help="output folder (must not exist or be empty)")
    parser.add_argument("--bits", type=int, choices=[4, 8], default=4, help="bits per weight (default: 4)")
    parser.add_argument("--group-size", type=int, choices=[32, 64, 128], default=None,
                        help="weights per scale/bias (default: 32 for 4 bits, 64 for 8 bits, as Kyutai publishes)")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                        help="dtype of scales, biases and norms (default: the source's)")
    return parser


def main(argv: list[str] | None = None) -> None:
    convert_from_args(PROG, configure_parser().parse_args(argv))


if __name__ == "__main__":
    main()
