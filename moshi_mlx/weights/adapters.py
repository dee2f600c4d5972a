"""LoRA adapter files: one format for ours, torch moshi's and moshi-finetune's.

An adapter is a folder laid out as moshi-finetune's `checkpoint_N/consolidated/`:

    lora.safetensors   `<module>.lora_A.weight [rank, in]`, `<module>.lora_B.weight [out, rank]`
                       (torch moshi's LoRALinear names; our module paths equal torch's live ones),
                       plus full embedding tables (`emb.3.weight`, ...) when they were trained
    config.json        the LM's Kyutai config with `"lora": true, "lora_rank", "lora_scaling"`

torch moshi loads it as `get_moshi_lm(base, lm_kwargs=config, lora_weights="lora.safetensors")`
(Kyutai's `python -m moshi.server --lora-weight ... --config-path ...`), and an adapter trained by
moshi-finetune loads here unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..files import atomic_write
from ..models.lm import Lm
from ..modules.lora import LoRALinear, apply_lora, linear_shape, lora_modules
from .common import WeightsError, read_safetensors, strict_load
from .export_torch import kyutai_config, write_safetensors

ADAPTER_WEIGHTS = "lora.safetensors"
FULL_WEIGHTS = "consolidated.safetensors"  # a full fine-tune's checkpoint: the whole LM, torch layout
ADAPTER_CONFIG = "config.json"
DEFAULT_SCALING = 2.0  # torch moshi's `lora_scaling` default


def adapter_state(model: nn.Module, extra: tuple[str, ...] = ()) -> dict[str, mx.array]:
    """The LoRA weights of `model` (and its parameters named in `extra`), torch names."""
    out: dict[str, mx.array] = {}
    for path, m in lora_modules(model).items():
        out[f"{path}.lora_A.weight"] = m.lora_A.weight
        out[f"{path}.lora_B.weight"] = m.lora_B.weight
    params = dict(tree_flatten(model.parameters()))
    for key in extra:
        out[key] = params[key]
    return out


def save_adapters(model: Lm, out_dir: str | Path, extra: tuple[str, ...] = (), dtype: mx.Dtype | None = None) -> Path:
    """Writes `out_dir/lora.safetensors` and `out_dir/config.json` (each atomically); returns `out_dir`."""
    layers = lora_modules(model)
    if not layers:
        raise WeightsError("the model has no LoRA layers to save")
    first = next(iter(layers.values()))
    ranks = {m.rank for m in layers.values()}
    scalings = {m.scaling for m in layers.values()}
    if len(ranks) != 1 or len(scalings) != 1:
        raise WeightsError(f"LoRA layers differ in rank {sorted(ranks)} or scaling {sorted(scalings)}")
    state = adapter_state(model, extra)
    if dtype is not None:
        state = {k: v.astype(dtype) for k, v in state.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = kyutai_config(model)
    config.update(lora=True, lora_rank=first.rank, lora_scaling=first.scaling)
    write_safetensors(out_dir / ADAPTER_WEIGHTS, state, {"format": "pt"})
    with atomic_write(out_dir / ADAPTER_CONFIG) as f:
        f.write(json.dumps(config, indent=2) + "\n")
    return out_dir


def find_adapter(source: str | Path) -> tuple[Path, Path | None]:
    """`(weights file, config file or None)` of an adapter given as a file, a folder holding
    `lora.safetensors`, or a moshi-finetune checkpoint folder (its `consolidated/`)."""
    source = Path(source)
    if source.is_file():
        config = source.parent / ADAPTER_CONFIG
        return source, config if config.is_file() else None
    for folder in (source, source / "consolidated"):
        for name in (ADAPTER_WEIGHTS, FULL_WEIGHTS):
            if (folder / name).is_file():
                config = folder / ADAPTER_CONFIG
                return folder / name, config if config.is_file() else None
    if source.is_dir():
        raise WeightsError(
            f"{source}: no {ADAPTER_WEIGHTS} (or {FULL_WEIGHTS}) in this folder or its consolidated/ folder"
        )
    raise WeightsError(f"{source}: no such adapter file or folder")


def load_adapters(model: Lm, source: str | Path) -> Lm:
    """Adds the LoRA layers (and trained embeddings) of adapter `source` to `model`, in place."""
    weights_path, config_path = find_adapter(source)
    if weights_path.name == FULL_WEIGHTS:  # full fine-tuning: every weight replaced, in place
        from .kyutai_torch import convert_kyutai_torch

        converted, origin = convert_kyutai_torch(read_safetensors(weights_path), model.cfg, str(weights_path))
        if lora_modules(model) or any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules()):
            raise WeightsError(f"{weights_path}: full fine-tuned weights load into a float base model only")
        strict_load(model, converted, str(weights_path), origin)
        return model
    state = read_safetensors(weights_path, what="a LoRA adapter file")
    scaling = DEFAULT_SCALING
    if config_path is not None:
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as e:
            raise WeightsError(f"{config_path}: not a readable JSON config ({e})") from e
        scaling = float(config.get("lora_scaling", DEFAULT_SCALING))
    pairs: dict[str, dict[str, mx.array]] = {}
    others: dict[str, mx.array] = {}
    for key, value in state.items():
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if key.endswith(suffix):
                pairs.setdefault(key[: -len(suffix)], {})[part] = value
                break
        else:
            others[key] = value
    if not pairs and not others:
        raise WeightsError(f"{weights_path}: the adapter file holds no weights")
    linears = {p: m for p, m in model.named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))}
    for path, ab in sorted(pairs.items()):
        if set(ab) != {"lora_A", "lora_B"}:
            raise WeightsError(f"{weights_path}: {path!r} has {sorted(ab)} but needs both lora_A and lora_B")
        if path not in linears:
            raise WeightsError(f"{weights_path}: key {path + '.lora_A.weight'!r} names no Linear layer of this model")
        a, b = ab["lora_A"], ab["lora_B"]
        out_f, in_f = linear_shape(linears[path])
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != in_f or b.shape[0] != out_f or a.shape[0] != b.shape[1]:
            raise WeightsError(
                f"{weights_path}: {path!r} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, "
                f"which do not fit a [{out_f}, {in_f}] Linear"
            )
    for path, ab in pairs.items():
        rank = ab["lora_A"].shape[0]
        apply_lora(model, rank, scaling, where=lambda p, path=path: p == path)
    layers = lora_modules(model)
    for path, ab in pairs.items():
        layer: LoRALinear = layers[path]
        layer.lora_A.weight = ab["lora_A"].astype(mx.float32)
        layer.lora_B.weight = ab["lora_B"].astype(mx.float32)
    if others:
        params = dict(tree_flatten(model.parameters()))
        for key, value in others.items():
            if key not in params:
                raise WeightsError(
                    f"{weights_path}: key {key!r} is neither a LoRA weight nor a parameter of this model"
                )
            if params[key].shape != value.shape:
                raise WeightsError(
                    f"{weights_path}: key {key!r} has shape {tuple(value.shape)}, the model's is {tuple(params[key].shape)}"
                )
        model.load_weights([(k, v.astype(params[k].dtype)) for k, v in others.items()], strict=False)
    mx.eval(model.parameters())
    return model


def apply_adapter(model: Lm, source: str | Path) -> Lm:
    """`load_adapters`, then folded into a float base for speed (a quantized base keeps the LoRA
    layers beside it: merging would round the update away when re-quantizing)."""
    from ..modules.lora import fuse_lora

    load_adapters(model, source)
    if not any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules()):
        fuse_lora(model)
    return model
