"""Our LM -> Kyutai's torch checkpoint layout (the inverse of `kyutai_torch.convert_kyutai_torch`).

The output is what Kyutai publishes (`model.safetensors` of `kyutai/moshiko-pytorch-bf16`):
attention projections in the published spelling (`self_attn.in_proj_weight` / `self_attn.out_proj.weight`,
the depformer's per-step matrices stacked along dim 0), RMSNorm weights as `alpha [1, 1, d]`, every
other key unchanged. torch moshi's `get_moshi_lm` and Kyutai's Rust server load it. Quantized modules
are dequantized (Kyutai's torch format holds float weights); LoRA layers must be fused first.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..files import atomic_path, atomic_write
from ..models.lm import Lm
from ..modules.lora import LoRALinear, dense_weight
from ..modules.transformer import RMSNorm
from .common import WeightsError

_PROJ = re.compile(r"^(?P<prefix>.*\.self_attn\.)(?P<kind>in|out)_projs\.(?P<index>\d+)\.weight$")


def write_safetensors(path: str | Path, weights: dict[str, mx.array], metadata: dict[str, str] | None = None) -> None:
    """`mx.save_safetensors` to exactly `path`, atomically (a file object: mlx would append a suffix to a name)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        mx.save_safetensors(f, weights, metadata=metadata or {})


def _dense_params(model: Lm) -> dict[str, mx.array]:
    """Our parameter names -> float arrays, quantized Linears/Embeddings dequantized."""
    out: dict[str, mx.array] = {}
    quantized = {}
    for path, m in model.named_modules():
        if isinstance(m, LoRALinear):
            raise WeightsError(f"module {path!r} still has a LoRA adapter; fuse it before exporting")
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            quantized[path] = m
    for key, value in tree_flatten(model.parameters()):
        path, _, leaf = key.rpartition(".")
        if path in quantized:
            if leaf == "weight":
                m = quantized[path]
                out[key] = dense_weight(m).astype(m.scales.dtype)
            elif leaf == "bias":
                out[key] = value
            continue  # scales / biases are folded into the weight
        out[key] = value
    return out


def export_kyutai_torch(model: Lm, dtype: mx.Dtype | None = mx.bfloat16) -> dict[str, mx.array]:
    """The LM's weights in Kyutai's published torch spelling, cast to `dtype` (None: as they are)."""
    params = _dense_params(model)
    rms = {p for p, m in model.named_modules() if isinstance(m, RMSNorm)}
    out: dict[str, mx.array] = {}
    stacks: dict[str, dict[int, mx.array]] = {}
    for key, value in params.items():
        m = _PROJ.match(key)
        if m is not None:
            name = f"{m['prefix']}in_proj_weight" if m["kind"] == "in" else f"{m['prefix']}out_proj.weight"
            stacks.setdefault(name, {})[int(m["index"])] = value
            continue
        path, _, leaf = key.rpartition(".")
        if path in rms and leaf == "weight":
            out[f"{path}.alpha"] = value.reshape(1, 1, -1)
            continue
        out[key] = value
    for name, parts in stacks.items():
        out[name] = mx.concatenate([parts[i] for i in sorted(parts)], axis=0)
    if dtype is not None:
        out = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in out.items()}
    return out


def kyutai_config(model: Lm) -> dict:
    """Kyutai's `config.json` keys of `model` (without our quantization record)."""
    if not model.cfg.raw:
        raise WeightsError("the model's config was not built from Kyutai's config keys; cannot write config.json")
    return {k: v for k, v in model.cfg.raw.items() if k not in ("quantization", "moshi_name")}


def save_kyutai_torch(model: Lm, out_dir: str | Path, dtype: mx.Dtype | None = mx.bfloat16) -> Path:
    """Writes `out_dir/model.safetensors` (torch layout) and `out_dir/config.json`, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = export_kyutai_torch(model, dtype)
    config = kyutai_config(model)
    config["moshi_name"] = "model.safetensors"
    write_safetensors(out_dir / "model.safetensors", weights, {"format": "pt"})
    with atomic_write(out_dir / "config.json") as f:
        f.write(json.dumps(config, indent=2) + "\n")
    return out_dir
