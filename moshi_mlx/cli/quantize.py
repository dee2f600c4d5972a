"""`moshi-mlx quantize SRC OUT_DIR --bits 4 --group-size 32`: quantize an unquantized LM checkpoint."""

from __future__ import annotations

from ..weights.common import DTYPES
from ..weights.quantize import SUPPORTED_GROUP_SIZES, group_size_help
from .common import ArgumentParser
from .convert import convert_from_args

PROG = "moshi-mlx quantize"


def configure_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Quantize an unquantized Moshi LM checkpoint (MLX affine quantization of every Linear and\n"
        "Embedding; norms stay in floating point) into a new folder, with the tokenizer and Mimi files.",
        epilog="example:\n  moshi-mlx quantize kyutai/moshiko-mlx-bf16 ./moshiko-q8 --bits 8",
    )
    parser.add_argument("src", help="weights file, folder, org/repo or hf://org/repo/file")
    parser.add_argument("out_dir", help="output folder (must not exist or be empty)")
    parser.add_argument("--bits", type=int, choices=[4, 8], default=4, help="bits per weight")
    parser.add_argument("--group-size", type=int, choices=SUPPORTED_GROUP_SIZES, default=None,
                        help=f"weights per scale and bias (default: {group_size_help()}, as Kyutai publishes)")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="dtype of scales, biases and norms (default: the source's)")
    return parser


def main(argv: list[str] | None = None) -> None:
    convert_from_args(PROG, configure_parser().parse_args(argv))


if __name__ == "__main__":
    main()
