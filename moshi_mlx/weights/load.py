"""`load_lm`: any published Moshi LM checkpoint (or one we saved) -> a ready `Lm`.

Layouts are told apart by their keys (`detect_layout`):
- "kyutai_mlx": Kyutai's MLX files, bf16 or quantized (`audio_embs.*`, `depformer.slices.*`);
- "kyutai_torch": Kyutai's torch files (`*.alpha` norms, `in_proj_weight`) or a torch `state_dict()`;
- "moshi_mlx": our own format (`save_lm`), already in our names, possibly quantized.
- "hf": the HF transformers Moshi layout (`decoder.model.*`, `depth_decoder.*`; see `hf.py`), whose
  `config.json` is HF's; its Mimi (`audio_encoder.*`) is read by `hf_folder.hf_mimi`.
Quantization is read from the weights (`.scales` keys) and re-applied to a fresh model before a
strict load. Loading is lazy: tensors are read from the file when first evaluated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import mlx.core as mx

from ..config import ConfigError, LmConfig
from ..hub import ModelFiles, resolve
from ..models.lm import Lm
from .common import WeightsError, read_safetensors, strict_load
from .kyutai_mlx import convert_kyutai_mlx, is_kyutai_mlx
from .hf import convert_hf, is_hf_config, is_hf_layout, lm_config_from_hf
from .kyutai_torch import convert_kyutai_torch
from .quantize import infer_quantization, model_quantization, quantize_for_weights

LAYOUTS = ("kyutai_mlx", "kyutai_torch", "moshi_mlx", "hf")

Converted = tuple[dict[str, mx.array], dict[str, str], Callable[[str], str] | None]


def detect_layout(keys: list[str], source: str) -> str:
    """Names the checkpoint layout of an LM state dict from its keys."""
    if is_kyutai_mlx(keys):
        return "kyutai_mlx"
    if is_hf_layout(keys):
        return "hf"
    if any(k.endswith((".alpha", ".in_proj_weight")) or ".self_attn.out_proj." in k for k in keys):
        return "kyutai_torch"
    if any(k.startswith(("text_emb.", "emb.", "transformer.layers.")) for k in keys):
        # Ours and a live torch `state_dict()` share names except RMSNorm `alpha` (handled above);
        # the torch converter maps the remaining torch-only spellings, so both go through it.
        return "moshi_mlx"
    first = sorted(keys)[0] if keys else None
    raise WeightsError(
        f"{source}: not a Moshi LM checkpoint in any known layout "
        + (f"(unrecognised key {first!r})" if first else "(no tensors)")
    )


def convert_any(state: Mapping[str, mx.array], cfg: LmConfig, source: str) -> tuple[str, Converted]:
    """Detects the layout of `state` and maps it to our names."""
    layout = detect_layout(list(state), source)
    if layout == "kyutai_mlx":
        return layout, convert_kyutai_mlx(state, cfg, source)
    if layout == "hf":
        return layout, convert_hf(state, cfg, source)
    converted, origin = convert_kyutai_torch(state, cfg, source)
    return layout, (converted, origin, None)


def _checkpoint_dtype(weights: Mapping[str, mx.array]) -> mx.Dtype:
    norm = weights.get("out_norm.weight")
    if norm is not None:
        return norm.dtype
    return next((w.dtype for w in weights.values() if mx.issubdtype(w.dtype, mx.floating)), mx.float32)


def build_lm(
    state: Mapping[str, mx.array], cfg: LmConfig, source: str, dtype: mx.Dtype | None = None
) -> Lm:
    """A fresh `Lm(cfg)` in `dtype` (default: the checkpoint's), quantized like `state`, strictly loaded."""
    _, (weights, origin, spell_missing) = convert_any(state, cfg, source)
    model = Lm(cfg)
    model.set_dtype(dtype or _checkpoint_dtype(weights))
    quant = infer_quantization(weights, model, source, origin, spell_missing)
    if quant is not None:
        quantize_for_weights(model, weights, *quant)
    strict_load(model, weights, source, origin, spell_missing=spell_missing)
    if cfg.raw.get("model_type") == "hibiki":
        _eos_reads_as_padding(model)
    return model


def _eos_reads_as_padding(model: Lm) -> None:
    """Hibiki: the text EOS (2) gets the input embedding of PAD (3), as Kyutai's loader does
    (`CheckpointInfo.get_moshi`), so that an EOS sampled before the input ends reads as padding."""
    emb = model.text_emb
    for name in ("weight", "scales", "biases"):  # a quantized table's rows move with their scales
        if name in emb:
            rows = emb[name]
            emb[name] = mx.concatenate([rows[:2], rows[3:4], rows[3:]])


def load_lm(
    path_or_dir: str | Path,
    config: LmConfig | None = None,
    dtype: mx.Dtype | None = None,
    files: ModelFiles | None = None,
) -> Lm:
    """Loads the Moshi LM from a weights file, a folder, "org/repo" or "hf://org/repo/file".

    Args:
        path_or_dir: where the LM weights are (see `moshi_mlx.hub.resolve`).
        config: the architecture; default: the `config.json` beside the weights, else the 7B.
        dtype: floating dtype of the model; default: the checkpoint's (bf16 for published files).
        files: already resolved files (skips resolution of `path_or_dir`).

    Returns:
        The model, lazily loaded (weights are read from the mapped file on first use).
    """
    files = files or resolve(path_or_dir, require=("lm",))
    assert files.lm is not None
    cfg = config or lm_config_of(files)
    source = str(files.lm)
    config_quant = (files.config_dict() or {}).get("quantization") if config is None else None
    model = build_lm(read_safetensors(files.lm), cfg, source, dtype)
    if config_quant is not None:
        _check_recorded_quantization(model, config_quant, files)
    return model


def lm_config_of(files: ModelFiles) -> LmConfig:
    """The LM architecture of `files`: its `config.json` in Kyutai's or HF's format, else the 7B."""
    raw = files.config_dict()
    if not is_hf_config(raw):
        return files.lm_config()
    try:
        return lm_config_from_hf(raw)
    except ConfigError as e:
        raise ConfigError(f"{files.config}: {e}") from e


def _check_recorded_quantization(model: Lm, recorded: object, files: ModelFiles) -> None:
    found = model_quantization(model)
    want = None
    if isinstance(recorded, dict):
        want = (recorded.get("group_size"), recorded.get("bits"))
    if found != want:
        raise ConfigError(
            f"{files.config}: 'quantization' says {recorded!r} but {files.lm} holds "
            + ("no quantized weights" if found is None else f"group size {found[0]}, {found[1]} bits")
        )
