"""Whole HF transformers Moshi folders: write one from our LM and a Mimi, read the Mimi back out.

`save_hf` writes what `MoshiForConditionalGeneration.from_pretrained` reads: `config.json` (the
LM's HF config with its Mimi as `audio_encoder_config`) and `model.safetensors` (LM and
`audio_encoder.*` in HF names, torch metadata), plus copies of extra files (the tokenizer), into
a temporary folder renamed into place: a failure leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import mlx.core as mx
import numpy as np

from ..config import ConfigError, MimiConfig
from ..files import normal_mode
from ..hub import CONFIG_NAME, MIMI_NAME, HubError, ModelFiles
from ..models.lm import Lm
from .common import read_safetensors
from .hf import MIMI_PREFIX, hf_lm_config, hf_lm_state, is_hf_config
from .hf_mimi import hf_mimi_config, hf_mimi_state, kyutai_mimi_state, mimi_config_from_hf
from .mimi import is_published, load_mimi, mimi_torch_state, save_mimi
from .save import save_lm
from .tiny import MIMI_CONFIG_NAME

WEIGHTS_NAME = "model.safetensors"
_DTYPE_NAMES = {mx.float32: "float32", mx.bfloat16: "bfloat16", mx.float16: "float16"}


def hf_config(model: Lm, mimi_cfg: MimiConfig) -> dict[str, Any]:
    """The HF Moshi `config.json` of `model` with the Mimi `mimi_cfg`."""
    config = hf_lm_config(model.cfg)
    if mimi_cfg.quantizer_n_q < model.cfg.dep_q:
        raise ConfigError(f"the Mimi has {mimi_cfg.quantizer_n_q} codebook levels, fewer than the LM's {model.cfg.dep_q}")
    config["audio_encoder_config"] = hf_mimi_config(mimi_cfg)
    config["dtype"] = _DTYPE_NAMES.get(model.text_emb.weight.dtype, "float32")
    return config


def save_hf(
    model: Lm,
    mimi_state: Mapping[str, mx.array | np.ndarray],
    mimi_cfg: MimiConfig,
    out_dir: str | Path,
    extra_files: Iterable[str | Path] = (),
) -> Path:
    """Writes `model` and a Kyutai torch Mimi state (`mimi_state`, published spelling) as a new HF
    Moshi folder `out_dir` (which must not exist or be empty); returns it."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir}: already exists and is not an empty folder; choose a new output folder")
    config = hf_config(model, mimi_cfg)
    dtype = model.text_emb.weight.dtype
    weights = hf_lm_state(model)
    for key, value in hf_mimi_state(mimi_state, mimi_cfg).items():
        weights[MIMI_PREFIX + key] = value.astype(dtype) if mx.issubdtype(value.dtype, mx.floating) else value
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        mx.save_safetensors(str(tmp / WEIGHTS_NAME), weights, metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        for f in map(Path, extra_files):
            if f.name in (WEIGHTS_NAME, CONFIG_NAME):
                raise ValueError(f"{f}: an extra file may not be named {f.name}")
            shutil.copy2(f, tmp / f.name)
        os.chmod(tmp, normal_mode(directory=True))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def hf_mimi(
    weights: str | Path | Mapping[str, mx.array], raw_config: Mapping[str, Any], source: str, num_codebooks: int = 8
) -> tuple[dict[str, mx.array], MimiConfig]:
    """The Mimi inside an HF Moshi checkpoint: (Kyutai torch state, its config with `num_codebooks` in use)."""
    state = read_safetensors(weights) if isinstance(weights, (str, Path)) else weights
    section = raw_config.get("audio_encoder_config")
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: the HF config has no 'audio_encoder_config'")
    cfg = mimi_config_from_hf(section, num_codebooks)
    mimi_state = {k[len(MIMI_PREFIX):]: v for k, v in state.items() if k.startswith(MIMI_PREFIX)}
    if not mimi_state:
        raise ConfigError(f"{source}: no '{MIMI_PREFIX}*' weights (the HF checkpoint holds no Mimi)")
    return kyutai_mimi_state(mimi_state, cfg, source), cfg


def convert_hf_folder(model: Lm, files: ModelFiles, out_dir: str | Path, to: str) -> Path:
    """Writes `model` (loaded from `files`) as a new folder when the source or the target is HF:
    `to="hf"` writes an HF Moshi folder with the source's Mimi inside; `to="moshi_mlx"` from an HF
    source writes our folder with the HF Mimi as a Kyutai Mimi file (and its config file when it is
    not the published architecture)."""
    raw = files.config_dict()
    if is_hf_config(raw):
        state, mimi_cfg = hf_mimi(files.lm, raw, str(files.lm))
        mimi = load_mimi(state, dataclasses.replace(mimi_cfg, num_codebooks=mimi_cfg.quantizer_n_q))
    else:
        if files.mimi is None:
            raise HubError(f"{files.where}: no Mimi weights file; the HF layout holds the Mimi, so it needs one")
        mimi_cfg = files.mimi_config() or MimiConfig.mimi_202407()
        mimi = load_mimi(files.mimi, dataclasses.replace(mimi_cfg, num_codebooks=mimi_cfg.quantizer_n_q))
    extra = [files.tokenizer] if files.tokenizer is not None else []
    if to == "hf":
        return save_hf(model, mimi_torch_state(mimi), mimi.cfg, out_dir, extra)
    with tempfile.TemporaryDirectory() as tmp:
        extra.append(save_mimi(mimi, Path(tmp) / MIMI_NAME))
        if not is_published(mimi.cfg):
            config_file = Path(tmp) / MIMI_CONFIG_NAME
            config_file.write_text(json.dumps(mimi.cfg.to_kyutai_json(), indent=2) + "\n")
            extra.append(config_file)
            model.cfg.raw = {**model.cfg.raw, "mimi_config_name": MIMI_CONFIG_NAME}
        return save_lm(model, out_dir, extra)
