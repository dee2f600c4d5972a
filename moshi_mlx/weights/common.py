"""Shared pieces of checkpoint handling: reading safetensors and strict, named loading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import InvalidArgument, MoshiError
from ..hub import ModelFileError, check_safetensors


# The one spelling of floating dtypes across commands and loaders (`--dtype bf16`).
DTYPES: dict[str, mx.Dtype] = {"bf16": mx.bfloat16, "fp16": mx.float16, "fp32": mx.float32}


def parse_dtype(name: str | None) -> mx.Dtype | None:
    """The MLX dtype named `name` (a key of `DTYPES`); None stays None (keep the checkpoint's)."""
    if name is None:
        return None
    if name not in DTYPES:
        raise InvalidArgument(f"unsupported dtype {name!r} (supported: {', '.join(DTYPES)})")
    return DTYPES[name]


class WeightsError(MoshiError, ValueError):
    """A checkpoint that does not fit the model: the message names the file, key and shapes."""


def read_safetensors(path: str | Path, what: str = "a model weights file") -> dict[str, mx.array]:
    """Reads every tensor of a safetensors file (lazily mapped by MLX), after checking its header
    and size (`moshi_mlx.hub.check_safetensors`); `what` names the expected content in errors."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.name.endswith(".safetensors.index.json"):
        return _read_shards(path, what)
    try:
        check_safetensors(path, what)
    except ModelFileError as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e.problem})") from e
    try:
        return dict(mx.load(str(path), format="safetensors"))
    except Exception as e:  # MLX raises RuntimeError/ValueError with multi-line messages
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{path}: not a readable safetensors file ({reason})") from e


def _read_shards(index: Path, what: str) -> dict[str, mx.array]:
    """Every tensor of a sharded checkpoint (`model.safetensors.index.json` and the shards it names)."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from e
    out: dict[str, mx.array] = {}
    for shard in shards:
        tensors = read_safetensors(index.parent / shard, what)
        for key in (k for k, s in weight_map.items() if s == shard):
            if key not in tensors:
                raise WeightsError(f"{index.parent / shard}: missing key {key!r} (listed in {index.name})")
            out[key] = tensors[key]
    return out


def strict_load(
    model: nn.Module,
    weights: Mapping[str, mx.array],
    source: str,
    origin: Mapping[str, str] | None = None,
    cast: bool = True,
    spell_missing: Callable[[str], str] | None = None,
) -> None:
    """Loads `weights` into `model`, requiring exactly the model's keys and shapes.

    `origin` maps a model key to the checkpoint key it came from, for error messages;
    `spell_missing` names a missing model key in the checkpoint's own spelling.
    With `cast`, tensors are converted to the dtype of the parameter they replace.
    """
    origin = origin or {}
    expected = dict(tree_flatten(model.parameters()))
    missing = [k for k in expected if k not in weights]
    if missing:
        name = spell_missing(missing[0]) if spell_missing else missing[0]
        raise WeightsError(f"{source}: missing key {name!r}" + _more(missing))
    unexpected = [k for k in weights if k not in expected]
    if unexpected:
        k = unexpected[0]
        raise WeightsError(f"{source}: unexpected key {origin.get(k, k)!r}" + _more(unexpected))
    for k, ref in expected.items():
        w = weights[k]
        if tuple(w.shape) != tuple(ref.shape):
            raise WeightsError(
                f"{source}: key {origin.get(k, k)!r} has shape {tuple(w.shape)}, "
                f"expected {tuple(ref.shape)}" + (f" (for {k!r})" if origin.get(k, k) != k else "")
            )
    items = [(k, w.astype(expected[k].dtype) if cast and w.dtype != expected[k].dtype else w) for k, w in weights.items()]
    model.update(tree_unflatten(items))


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
