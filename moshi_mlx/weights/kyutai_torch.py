"""Kyutai PyTorch checkpoints of the Moshi LM -> our MLX parameter names.

Two spellings exist for attention projections:
- published checkpoints: `self_attn.in_proj_weight` / `self_attn.out_proj.weight`, with the
  depformer's per-step matrices stacked along dim 0;
- a `state_dict()` of a live torch moshi 0.2.13 model: `self_attn.in_projs.{i}.weight` /
  `self_attn.out_projs.{i}.weight`.
Both become our `in_projs.{i}` / `out_projs.{i}` (cross-attention `cross_attention.*` alike). Conditioners
(`condition_provider.*`) and `extra_heads.*` keep their names. RMSNorm `alpha [1, 1, d]` becomes `weight [d]`.
Every other key keeps its name (our modules mirror torch's).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import mlx.core as mx

from ..config import LmConfig, TransformerConfig
from ..models.lm import Lm
from .common import WeightsError, read_safetensors, strict_load

_STACKED = re.compile(r"^(?P<prefix>.*\.(?:self_attn|cross_attention)\.)(?P<kind>in|out)_proj(?:_weight|\.weight)$")
_UNSUPPORTED = re.compile(r"(_scb$|\.lora_[AB]\.)")


def _transformer_cfg(cfg: LmConfig, key: str) -> TransformerConfig | None:
    if key.startswith("transformer."):
        return cfg.transformer
    if key.startswith("depformer."):
        return cfg.depformer
    return None


def convert_kyutai_torch(
    state: Mapping[str, mx.array], cfg: LmConfig, source: str = "checkpoint"
) -> tuple[dict[str, mx.array], dict[str, str]]:
    """Maps a Kyutai torch LM state dict to our names.

    Returns the converted weights and, for error messages, a map from each new key to the
    checkpoint key it came from. Shapes are checked later against the model (`strict_load`).
    """
    out: dict[str, mx.array] = {}
    origin: dict[str, str] = {}

    def put(key: str, value: mx.array, src: str) -> None:
        if key in out:
            raise WeightsError(f"{source}: key {src!r} duplicates {origin[key]!r} (both give {key!r})")
        out[key] = value
        origin[key] = src

    for src, value in state.items():
        if _UNSUPPORTED.search(src):
            raise WeightsError(
                f"{source}: key {src!r} belongs to a feature moshi_mlx does not load yet "
                "(bitsandbytes int8 or unfused LoRA)"
            )
        if cfg.dep_q == 0 and src.startswith("depformer_in."):
            continue  # torch builds one depformer input projection even without a depformer (STT); unused
        m = _STACKED.match(src)
        if m is not None:
            tcfg = _transformer_cfg(cfg, src)
            mult = 1 if tcfg is None else tcfg.num_weight_sets
            if value.ndim != 2 or value.shape[0] % mult:
                raise WeightsError(
                    f"{source}: key {src!r} has shape {tuple(value.shape)}, "
                    f"not {mult} stacked matrices"
                )
            rows = value.shape[0] // mult
            for i in range(mult):
                put(f"{m['prefix']}{m['kind']}_projs.{i}.weight", value[i * rows : (i + 1) * rows], src)
            continue
        if src.endswith(".alpha"):
            if value.ndim != 3 or value.shape[:2] != (1, 1):
                raise WeightsError(f"{source}: key {src!r} has shape {tuple(value.shape)}, expected (1, 1, dim)")
            put(src[: -len("alpha")] + "weight", value.reshape(-1), src)
            continue
        put(src, value, src)
    return out, origin


def load_lm_weights(model: Lm, weights: str | Path | Mapping[str, mx.array], source: str | None = None) -> Lm:
    """Loads a Kyutai torch-format LM checkpoint (file or dict) into `model`, strictly."""
    if isinstance(weights, (str, Path)):
        source = source or str(weights)
        weights = read_safetensors(weights)
    source = source or "checkpoint"
    converted, origin = convert_kyutai_torch(weights, model.cfg, source)
    strict_load(model, converted, source, origin)
    return model
