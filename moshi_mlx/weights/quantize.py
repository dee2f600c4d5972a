"""MLX affine quantization of the LM: infer it from a checkpoint, apply it to a model, describe it.

A quantized module stores `<module>.weight` (uint32, `[out, in * bits / 32]`), `<module>.scales`
and `<module>.biases` (`[out, in / group_size]`). Which modules are quantized is read from the
weights themselves (`.scales` present), as mlx-lm does; bits and group size from their shapes.
"""

from __future__ import annotations

from typing import Callable, Mapping

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..errors import InvalidArgument
from ..modules.quantized import quantize_modules
from .common import WeightsError

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)
SUPPORTED_GROUP_SIZES = (32, 64, 128)
# Kyutai's published choices (moshiko-mlx-q4 / -q8); used when a caller gives bits only.
DEFAULT_GROUP_SIZE = {4: 32, 8: 64}


def default_group_size(bits: int) -> int:
    """The group size used when only `bits` is given: 32 for 4 bits, 64 otherwise (as Kyutai publishes)."""
    return DEFAULT_GROUP_SIZE.get(bits, 64)


def group_size_help() -> str:
    """How the default group size is chosen, for command-line help."""
    return ", ".join(f"{g} for {b} bits" for b, g in DEFAULT_GROUP_SIZE.items())


def infer_quantization(
    weights: Mapping[str, mx.array],
    model: nn.Module,
    source: str,
    origin: Mapping[str, str] | None = None,
    spell_missing: Callable[[str], str] | None = None,
) -> tuple[int, int] | None:
    """`(group_size, bits)` of the quantized modules in `weights` (our names), None if none is.

    `model` is the unquantized model, whose `<module>.weight` gives each module's input width;
    `origin` and `spell_missing` name keys in the checkpoint's spelling (see `strict_load`).
    """
    origin = origin or {}
    spell_missing = spell_missing or (lambda k: k)
    params = dict(tree_flatten(model.parameters()))
    found: tuple[int, int] | None = None
    first = ""
    for key in sorted(k for k in weights if k.endswith(".scales")):
        module = key[: -len(".scales")]
        ref = params.get(f"{module}.weight")
        if ref is None:
            raise WeightsError(f"{source}: unexpected key {origin.get(key, key)!r} (no quantizable module there)")
        packed = weights.get(f"{module}.weight")
        if packed is None:
            raise WeightsError(f"{source}: missing key {spell_missing(module + '.weight')!r}")
        wkey = origin.get(f"{module}.weight", f"{module}.weight")
        in_dim, scales = ref.shape[-1], weights[key]
        bits, rem_bits = divmod(packed.shape[-1] * 32, in_dim) if packed.ndim == 2 else (0, 1)
        group, rem_group = divmod(in_dim, scales.shape[-1]) if scales.ndim == 2 else (0, 1)
        if packed.dtype != mx.uint32 or rem_bits or bits not in SUPPORTED_BITS:
            raise WeightsError(
                f"{source}: key {wkey!r} has dtype {packed.dtype} and shape {tuple(packed.shape)}, "
                f"not a uint32 packing of {in_dim} inputs"
            )
        if rem_group or group not in SUPPORTED_GROUP_SIZES:
            raise WeightsError(
                f"{source}: key {origin.get(key, key)!r} has shape {tuple(scales.shape)}, "
                f"not a group size of {in_dim} inputs"
            )
        if found is None:
            found, first = (group, bits), origin.get(key, key)
        elif found != (group, bits):
            raise WeightsError(
                f"{source}: key {origin.get(key, key)!r} is quantized with group size {group} and {bits} bits, "
                f"but {first!r} with group size {found[0]} and {found[1]} bits"
            )
    return found


def quantize_for_weights(model: nn.Module, weights: Mapping[str, mx.array], group_size: int, bits: int) -> None:
    """Quantizes exactly the modules of `model` whose `.scales` are in `weights` (before loading them)."""
    quantize_modules(model, group_size, bits, lambda path, m: f"{path}.scales" in weights)


def quantize_lm(model: nn.Module, bits: int, group_size: int | None = None) -> tuple[int, int]:
    """Quantizes every Linear and Embedding whose input width is a multiple of the group size.

    Norms stay in floating point. Returns `(group_size, bits)`.
    """
    if bits not in SUPPORTED_BITS:
        raise InvalidArgument(f"unsupported bits {bits} (supported: {', '.join(map(str, SUPPORTED_BITS))})")
    group_size = group_size or default_group_size(bits)
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise ValueError(
            f"unsupported group size {group_size} (supported: {', '.join(map(str, SUPPORTED_GROUP_SIZES))})"
        )
    if model_quantization(model) is not None:
        raise InvalidArgument("the model is already quantized")

    def predicate(path: str, m: nn.Module) -> bool:
        return hasattr(m, "to_quantized") and m.weight.shape[-1] % group_size == 0

    quantize_modules(model, group_size, bits, predicate)
    return group_size, bits


def model_quantization(model: nn.Module) -> tuple[int, int] | None:
    """`(group_size, bits)` of a quantized model, None when nothing in it is quantized."""
    for _, m in model.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            return m.group_size, m.bits
    return None
