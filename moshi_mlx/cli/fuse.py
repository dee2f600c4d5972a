"""`moshi-mlx fuse`: merge a fine-tune's adapter into the base weights, as a new model folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..weights.common import DTYPES, parse_dtype
from .common import ArgumentParser, run

PROG = "moshi-mlx fuse"

DESCRIPTION = """\
Merge a LoRA adapter (ours, torch moshi's or moshi-finetune's: a checkpoint folder or lora.safetensors)
into the base LM: W + scaling * B @ A, as torch moshi's merge_weight. The output folder holds the fused
LM, the tokenizer and Mimi, ready for chat/run/serve --model.

--torch writes Kyutai's torch layout instead (model.safetensors as in kyutai/moshiko-pytorch-bf16, with
config.json): torch moshi's get_moshi_lm, `python -m moshi.server --moshi-weight` and Kyutai's Rust server
load it; this is how a Mac fine-tune goes to a multi-user GPU server."""

EPILOG = """\
examples:
  moshi-mlx fuse --model kyutai/moshiko-pytorch-bf16 --adapter runs/mine/checkpoints/checkpoint_002000 ./mine
  moshi-mlx fuse --model ./moshiko-q4 --adapter runs/mine/checkpoints/checkpoint_002000 ./mine-q4
  moshi-mlx fuse --model kyutai/moshiko-pytorch-bf16 --adapter runs/mine/checkpoints/checkpoint_002000 \\
      --torch ./mine-torch"""


def configure_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("out_dir", help="output folder (must not exist or be empty)")
    parser.add_argument("--model", required=True, help="the base model the adapter was trained on (as chat --model)")
    parser.add_argument(
        "--adapter", required=True, help="checkpoint folder, its consolidated/ folder or a lora.safetensors"
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="dtype of the fused weights (default: the base's; --torch default: bf16)")  # fmt: skip
    parser.add_argument("--bits", type=int, choices=[4, 8], default=None,
                        help="quantize the fused LM to 4 or 8 bits (a quantized base is re-quantized with its own "
                        "bits unless --dequantize)")  # fmt: skip
    parser.add_argument("--dequantize", action="store_true", help="write float weights for a quantized base")
    parser.add_argument("--torch", action="store_true", help="write Kyutai's torch layout (float, no quantization)")
    return parser


def fuse_model(args) -> Path:
    """Loads, merges and writes; returns the output folder."""
    import mlx.core as mx

    from ..hub import resolve
    from ..modules.lora import fuse_lora
    from ..weights.adapters import load_adapters
    from ..weights.export_torch import save_kyutai_torch
    from ..weights.load import load_lm
    from ..weights.quantize import quantize_lm
    from ..weights.save import save_lm

    out = Path(args.out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: already exists and is not an empty folder; choose a new output folder")
    files = resolve(args.model)
    lm = load_lm(args.model, dtype=parse_dtype(args.dtype), files=files)
    load_adapters(lm, args.adapter)
    fuse_lora(lm, quantize=False if (args.dequantize or args.torch) else None)
    extra = [p for p in (files.tokenizer, files.mimi, files.mimi_config_file) if p is not None]
    if args.torch:
        tmp = out.parent / f".{out.name}.tmp-fuse"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            save_kyutai_torch(lm, tmp, parse_dtype(args.dtype) or mx.bfloat16)
            for f in extra:
                shutil.copy2(f, tmp / Path(f).name)
            if out.exists():
                out.rmdir()
            tmp.replace(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out
    if args.bits:
        from ..weights.quantize import model_quantization

        if model_quantization(lm) is not None and not args.dequantize:
            raise ValueError("--bits applies to a float base (a quantized base keeps its bits; add --dequantize)")
        quantize_lm(lm, args.bits)
    mx.eval(lm.parameters())
    return save_lm(lm, out, extra_files=extra)


def main(argv: list[str] | None = None) -> None:
    args = configure_parser().parse_args(argv)
    out = run(PROG, lambda: fuse_model(args))
    print(f"fused model written to {out}")


if __name__ == "__main__":
    main()
