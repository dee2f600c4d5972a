"""LoRA: a low-rank update beside a frozen `nn.Linear` or `nn.QuantizedLinear` (QLoRA).

Semantics of torch moshi's `moshi/modules/lora.py`: `y = W x (+ b) + scaling * B (A x)` with
`lora_A: [rank, in]` (Kaiming-uniform init) and `lora_B: [out, rank]` (zeros, so a fresh adapter
changes nothing); merging gives `W + scaling * B @ A`. Adapters are applied from outside the model
classes by swapping modules (`apply_lora`), so every module that calls `self.linear(x)` picks them
up; parameter names end in `.lora_A.weight` / `.lora_B.weight` exactly as in torch.
"""

from __future__ import annotations

import math
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .quantized import QuantizedLinear

Linearish = nn.Linear | nn.QuantizedLinear


def linear_shape(linear: Linearish) -> tuple[int, int]:
    """`(out_features, in_features)` of a float or quantized Linear."""
    out_f, cols = linear.weight.shape
    if isinstance(linear, nn.QuantizedLinear):
        return out_f, cols * 32 // linear.bits
    return out_f, cols


def dense_weight(linear: Linearish) -> mx.array:
    """The `[out, in]` float weight of a Linear (dequantized for a QuantizedLinear)."""
    if isinstance(linear, nn.QuantizedLinear):
        return mx.dequantize(
            linear.weight, linear.scales, linear.get("biases"), linear.group_size, linear.bits, mode=linear.mode
        )
    return linear.weight


class LoRALinear(nn.Module):
    """`base(x) + scaling * lora_B(lora_A(x))`; the adapter computes in its own dtype (fp32 by default)."""

    def __init__(self, base: Linearish, rank: int, scaling: float, dtype: mx.Dtype = mx.float32):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        out_f, in_f = linear_shape(base)
        self.base = base
        self.scaling = scaling
        bound = 1.0 / math.sqrt(in_f)  # kaiming_uniform_(a=sqrt(5)) on [rank, in]
        self.lora_A = nn.Linear(in_f, rank, bias=False)
        self.lora_A.weight = mx.random.uniform(-bound, bound, (rank, in_f)).astype(dtype)
        self.lora_B = nn.Linear(rank, out_f, bias=False)
        self.lora_B.weight = mx.zeros((out_f, rank), dtype=dtype)

    @property
    def rank(self) -> int:
        return self.lora_A.weight.shape[0]

    def __call__(self, x: mx.array) -> mx.array:
        y = self.base(x)
        update = self.lora_B(self.lora_A(x.astype(self.lora_A.weight.dtype)))
        return y + (self.scaling * update).astype(y.dtype)

    def delta(self) -> mx.array:
        """`scaling * B @ A` in fp32, `[out, in]`."""
        a = self.lora_A.weight.astype(mx.float32)
        b = self.lora_B.weight.astype(mx.float32)
        return self.scaling * (b @ a)

    def merged(self, quantize: bool | None = None) -> Linearish:
        """A plain module with the update folded in (torch `merge_weight`).

        A float base stays float in its dtype. A quantized base is dequantized, updated and, unless
        `quantize` is False, quantized again with its own group size and bits (this rounds).
        """
        base = self.base
        bias = base.get("bias")
        if isinstance(base, nn.QuantizedLinear):
            w = dense_weight(base).astype(mx.float32) + self.delta()
            dtype = base.scales.dtype
            out_f, in_f = w.shape
            dense = nn.Linear(in_f, out_f, bias=bias is not None)
            dense.weight = w.astype(dtype)
            if bias is not None:
                dense.bias = bias
            if quantize is False:
                return dense
            return QuantizedLinear.from_linear(dense, base.group_size, base.bits, mode=base.mode)
        dtype = base.weight.dtype
        out_f, in_f = base.weight.shape
        dense = nn.Linear(in_f, out_f, bias=bias is not None)
        dense.weight = (base.weight.astype(mx.float32) + self.delta()).astype(dtype)
        if bias is not None:
            dense.bias = bias
        return dense


def _swap(model: nn.Module, make: Callable[[str, nn.Module], nn.Module | None]) -> int:
    """Replaces every submodule for which `make(path, module)` returns a module; returns the count."""
    swaps = []
    for path, module in model.named_modules():
        new = make(path, module)
        if new is not None:
            swaps.append((path, new))
    for path, new in swaps:
        *parents, last = path.split(".")
        parent: object = model
        for part in parents:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        if isinstance(parent, list):
            parent[int(last)] = new
        else:
            parent[last] = new
    return len(swaps)


def apply_lora(
    model: nn.Module,
    rank: int,
    scaling: float,
    dtype: mx.Dtype = mx.float32,
    where: Callable[[str], bool] | None = None,
) -> int:
    """Wraps every Linear/QuantizedLinear of `model` (torch `replace_all_linear_with_lora`); returns
    how many. `where(path)` may restrict which ones."""

    wrapped = tuple(p + "." for p in lora_modules(model))

    def make(path: str, m: nn.Module) -> nn.Module | None:
        if path.startswith(wrapped):
            return None
        if isinstance(m, (nn.Linear, nn.QuantizedLinear)) and (where is None or where(path)):
            return LoRALinear(m, rank, scaling, dtype)
        return None

    return _swap(model, make)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """The LoRA layers of `model` by module path."""
    return {p: m for p, m in model.named_modules() if isinstance(m, LoRALinear)}


def fuse_lora(model: nn.Module, quantize: bool | None = None) -> int:
    """Folds every LoRA layer into its base (see `LoRALinear.merged`); returns how many."""
    return _swap(model, lambda p, m: m.merged(quantize) if isinstance(m, LoRALinear) else None)


def remove_lora(model: nn.Module) -> int:
    """Puts every LoRA layer's untouched base back; returns how many."""
    return _swap(model, lambda p, m: m.base if isinstance(m, LoRALinear) else None)
