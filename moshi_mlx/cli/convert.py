"""`moshi-mlx convert SRC OUT_DIR`: any supported LM checkpoint -> our format (optionally quantized)."""

from __future__ import annotations

from ..weights.common import DTYPES
from ..weights.quantize import SUPPORTED_GROUP_SIZES, group_size_help
from .common import ArgumentParser, run

PROG = "moshi-mlx convert"


def configure_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Convert a Moshi LM checkpoint (Kyutai torch or MLX bf16/q8/q4, HF transformers, or ours) to a new folder\n"
        "with model.safetensors + config.json, copying the tokenizer and Mimi files when present.\n"
        "Nothing is written unless the whole conversion succeeds.",
        epilog="examples:\n"
        "  moshi-mlx convert kyutai/moshiko-pytorch-bf16 ./moshiko-bf16\n"
        "  moshi-mlx convert ./model.safetensors ./moshiko-q4 --quantize 4\n"
        "  moshi-mlx convert kyutai/moshiko-pytorch-bf16 ./moshiko-hf --to hf   # for transformers\n"
        "  moshi-mlx convert kmhf/hf-moshiko ./moshiko-bf16                    # HF layout in",
    )
    parser.add_argument("src", help="weights file, folder, org/repo or hf://org/repo/file")
    parser.add_argument("out_dir", help="output folder (must not exist or be empty)")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="floating dtype of the output (default: the source's)")
    parser.add_argument("--quantize", type=int, choices=[4, 8], default=None, dest="bits",
                        help="quantize Linear and Embedding weights to this many bits (default: keep the "
                        "source's precision)")
    parser.add_argument("--group-size", type=int, choices=SUPPORTED_GROUP_SIZES, default=None,
                        help=f"weights per quantization scale and bias; needs --quantize (default: {group_size_help()})")
    parser.add_argument("--to", choices=["moshi_mlx", "hf"], default="moshi_mlx",
                        help="output layout: ours (default) or HF transformers Moshi (MoshiForConditionalGeneration, "
                        "Mimi included; not quantized)")
    return parser


def convert_from_args(prog: str, args) -> None:
    """Runs the conversion the parsed `args` ask for (shared with `moshi-mlx quantize`)."""
    from ..weights.convert import convert

    out = run(prog, lambda: convert(args.src, args.out_dir, args.dtype, args.bits, args.group_size,
                                         getattr(args, "to", "moshi_mlx")))
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    convert_from_args(PROG, configure_parser().parse_args(argv))


if __name__ == "__main__":
    main()
