"""`save_lm`: our checkpoint format, written atomically.

A folder with `model.safetensors` (our parameter names, quantized modules as MLX's
`weight/scales/biases`) and `config.json` (Kyutai's config keys plus, when quantized,
`"quantization": {"group_size": G, "bits": B}` as mlx-lm writes it). Everything is written to a
hidden temporary folder beside the target, which is then renamed: a failure leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import mlx.core as mx
from mlx.utils import tree_flatten

from ..files import normal_mode
from ..hub import CONFIG_NAME
from ..models.lm import Lm
from .quantize import model_quantization

WEIGHTS_NAME = "model.safetensors"
# Config keys naming files of the source folder; ours are fixed names.
_DROPPED_KEYS = ("moshi_name", "quantization")


def lm_config_dict(model: Lm) -> dict:
    """The `config.json` content for `model`."""
    if not model.cfg.raw:
        raise ValueError("the model's LmConfig was not built from a Kyutai config (no raw keys to save)")
    config = {k: v for k, v in model.cfg.raw.items() if k not in _DROPPED_KEYS}
    quant = model_quantization(model)
    if quant is not None:
        config["quantization"] = {"group_size": quant[0], "bits": quant[1]}
    return config


def save_lm(model: Lm, out_dir: str | Path, extra_files: Iterable[str | Path] = ()) -> Path:
    """Writes `model` (and copies of `extra_files`, e.g. tokenizer and Mimi) to a new folder `out_dir`.

    `out_dir` must not exist or be empty. Returns `out_dir`.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir}: already exists and is not an empty folder; choose a new output folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    config = lm_config_dict(model)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        weights = dict(tree_flatten(model.parameters()))
        mx.save_safetensors(str(tmp / WEIGHTS_NAME), weights, metadata={"format": "mlx"})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        for f in extra_files:
            f = Path(f)
            if f.name in (WEIGHTS_NAME, CONFIG_NAME):
                raise ValueError(f"{f}: an extra file may not be named {f.name}")
            shutil.copy2(f, tmp / f.name)
        os.chmod(tmp, normal_mode(directory=True))  # mkdtemp makes it private; give it a normal folder's mode
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
