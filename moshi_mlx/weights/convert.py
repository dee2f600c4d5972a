"""`convert`: any supported LM checkpoint (file, folder or repo) -> a folder in our format."""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidArgument
from ..hub import resolve
from .common import parse_dtype
from .hf import is_hf_config
from .hf_folder import convert_hf_folder
from .load import load_lm
from .quantize import model_quantization, quantize_lm
from .save import save_lm

FORMATS = ("moshi_mlx", "hf")


def convert(
    src: str | Path,
    out_dir: str | Path,
    dtype: str | None = None,
    bits: int | None = None,
    group_size: int | None = None,
    to: str = "moshi_mlx",
) -> Path:
    """Loads the LM of `src`, optionally casts and quantizes it, and saves it to the new folder `out_dir`.

    `to` is the output format: ours (`"moshi_mlx"`) or HF transformers Moshi (`"hf"`, with the Mimi
    inside; not quantized). The tokenizer and Mimi of `src`, when present, go along. Nothing is
    written unless every step succeeds.
    """
    if to not in FORMATS:
        raise InvalidArgument(f"unknown output format {to!r} (supported: {', '.join(FORMATS)})")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir}: already exists and is not an empty folder; choose a new output folder")
    mx_dtype = parse_dtype(dtype)
    if group_size is not None and bits is None:
        raise InvalidArgument("a group size needs a number of bits to quantize to")
    if to == "hf" and bits is not None:
        raise InvalidArgument("the HF transformers layout holds no quantized weights; leave out --quantize")
    files = resolve(src, require=("lm",))
    model = load_lm(files.lm, dtype=mx_dtype, files=files)
    if bits is not None:
        if model_quantization(model) is not None:
            raise InvalidArgument(f"{files.lm}: already quantized; quantize from an unquantized (e.g. bf16) checkpoint")
        quantize_lm(model, bits, group_size)
    if to == "hf" or is_hf_config(files.config_dict()):
        return convert_hf_folder(model, files, out_dir, to)
    extra = [f for f in (files.tokenizer, files.mimi, files.mimi_config_file) if f is not None]
    return save_lm(model, out_dir, extra)
