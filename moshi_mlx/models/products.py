"""How the streaming frame applies the model's Linear layers: transposed weight views taken once,
a residual fused into the product, and on the CPU backend fp32 weights laid out for its BLAS and
large products split across the CPU's cores. Each gives the values that calling the module gives
(`modules.transformer.call`) bit for bit, but that a residual fused into a bf16/fp16 product is
rounded once, not twice; splitting a product changes no value."""

from __future__ import annotations

import os
from typing import Callable, Collection

import mlx.core as mx
import mlx.nn as nn

from ..modules.quantized import QuantizedLinear, quantized_product
from ..modules.transformer import Linear, call
from .lm import Lm

# Linear layers the frame applies without a residual sum (see `lay_out_for_cpu_blas`), but the
# text head: a copy of the model's largest matrix next to the original would raise its peak memory.
_PRODUCT_ONLY = ("in_projs", "linear_in", "linear1", "linears")

# Products with at least this many weights are split across the CPU's cores (`transposed_linear`).
# On 2 cores a split product waits on a second worker thread (about 70 µs measured, twice), which
# products of 2^18 weights or more repay (measured on `bench`'s tiny config: fp32, bf16 and q8).
# Quantized products, computed in fp32 (`modules.quantized`), cost about what bf16 ones do per
# weight and split best from the same size (tiny, paired rounds: 2^18 faster than 2^16, 2^17 and
# 2^19 in q8 and than 2^16 and 2^20 in q4).
SPLIT_MIN_WEIGHTS = 1 << 18
_SPLIT_COLUMNS = 16  # a column block's width is a multiple of this


def lay_out_for_cpu_blas(lm: Lm) -> frozenset[int]:
    """Stores the fp32 weights `[out, in]` of the projections the frame applies without a residual
    (`_PRODUCT_ONLY`) as transposed views of `[in, out]` row-major buffers, same values: MLX's
    bundled BLAS multiplies a row by that layout about twice as fast as by the transposed one.
    Every other use of a weight sees the same `[out, in]` array; weights already laid out are not
    copied. Only shapes whose products come out bit for bit the same in both layouts are laid out
    (`same_products`: another BLAS, e.g. OpenBLAS, may sum in another order). (With a residual,
    `mx.addmm` on that layout would add it first and round differently from the op-by-op model's
    product-then-sum.) Returns the `id`s of the modules laid out."""
    laid_out = set()
    exact: dict[tuple[int, ...], bool] = {}
    for name, m in lm.named_modules():
        if type(m) is not nn.Linear or "bias" in m or m.weight.dtype != mx.float32:
            continue
        if name.rstrip(".0123456789").rpartition(".")[2] not in _PRODUCT_ONLY:  # "…in_projs.0" -> "in_projs"
            continue
        laid = mx.contiguous(m.weight.T).T  # no copy when already laid out
        if (same := exact.get(m.weight.shape)) is None:
            same = exact[m.weight.shape] = same_products(m.weight, laid)
        if same:
            m.weight = laid
            mx.eval(m.weight)  # one weight at a time: the old buffer goes before the next copy
            laid_out.add(id(m))
        del laid
        mx.clear_cache()  # ... back to the system, not kept for later
    return frozenset(laid_out)


def same_products(weight: mx.array, other: mx.array) -> bool:
    """Whether `x @ weight.T` and `x @ other.T` (same values, another memory layout) are equal bit for
    bit for random `x` of 1, 2 and 4 rows (the frame's batch sizes, with and without guidance)."""
    x = mx.random.normal((4, weight.shape[-1]), key=mx.random.key(0))
    return all(mx.array_equal(x[:n] @ weight.T, x[:n] @ other.T).item() for n in (1, 2, 4))


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_streams: list[mx.Stream] = []


def cpu_streams(n: int) -> list[mx.Stream]:
    """The default CPU stream and `n - 1` more, each run by its own worker thread (made once per
    process)."""
    while len(_streams) < n - 1:
        _streams.append(mx.new_stream(mx.cpu))
    return [mx.default_stream(mx.cpu)] + _streams[: n - 1]


Product = Callable[[mx.array, "mx.array | None"], mx.array]  # (x, residual or None) -> x W^T [+ residual]


def transposed_linear(lm: Lm, parts: int = 1, whole: Collection[int] = ()) -> Linear:
    """Applies plain bias-free `nn.Linear` layers with their weights' transposed views taken once
    (no transpose node per call and frame), a residual sum fused into the product (`mx.addmm`); any
    other module (quantized, LoRA, with bias) is called. The views share the weights' memory and see
    the weights as they are now.

    With `parts > 1` (CPU cores), a plain bias-free or quantized product of at least
    `SPLIT_MIN_WEIGHTS` weights, unless its module's `id` is in
    `whole`, is computed as up to `parts` blocks of output columns, each on its own CPU stream
    (worker thread), then concatenated: each output is the same dot product as in the whole
    product. (Column blocks of a weight laid out `[in, out]`, see `lay_out_for_cpu_blas`, would be
    copies: pass those modules in `whole`.)"""
    views = {id(m): m.weight.T for _, m in lm.named_modules() if type(m) is nn.Linear and "bias" not in m}
    split: dict[int, tuple[list[int], list[Product]]] = {}
    if parts > 1:
        for _, m in lm.named_modules():
            if id(m) not in whole and (plan := _column_blocks(m, parts)) is not None:
                split[id(m)] = plan
    mx.eval(list(views.values()))

    def apply(module: nn.Module, x: mx.array, residual: mx.array | None = None) -> mx.array:
        plan = split.get(id(module))
        if plan is not None:
            bounds, products = plan
            rests = [None] * len(products) if residual is None else mx.split(residual, bounds, axis=-1)
            return mx.concatenate([product(x, r) for product, r in zip(products, rests)], axis=-1)
        wt = views.get(id(module))
        if wt is None:
            return call(module, x, residual)
        if residual is None:
            return x @ wt
        return mx.addmm(residual.astype(wt.dtype), x, wt)

    return apply


def _column_blocks(m: nn.Module, parts: int) -> tuple[list[int], list[Product]] | None:
    """For a plain bias-free or quantized Linear of at least `SPLIT_MIN_WEIGHTS` weights: the inner
    block boundaries of its output columns and one product per block, each on its own CPU stream,
    with the weight slices (views) as their only state; else None."""
    quantized = isinstance(m, nn.QuantizedLinear)
    if not (quantized or (type(m) is nn.Linear and "bias" not in m)):
        return None
    n_out = m.weight.shape[0]
    n_in = m.scales.shape[-1] * m.group_size if quantized else m.weight.shape[-1]
    parts = min(parts, n_out // _SPLIT_COLUMNS)
    if parts < 2 or n_out * n_in < SPLIT_MIN_WEIGHTS:
        return None
    width = -(-n_out // parts // _SPLIT_COLUMNS) * _SPLIT_COLUMNS  # ceil to a multiple of _SPLIT_COLUMNS
    starts = list(range(0, n_out, width))
    ends = starts[1:] + [n_out]
    products = [_block_product(m, a, b, s) for a, b, s in zip(starts, ends, cpu_streams(len(starts)))]
    return starts[1:], products


def _block_product(m: nn.Module, a: int, b: int, stream: mx.Stream) -> Product:
    """Output columns `a:b` of `m` (plain bias-free or quantized Linear) on `stream`, as `call`
    computes them; the weight slices are views, taken now."""
    if type(m) is nn.Linear:
        wt = m.weight[a:b].T
        mx.eval(wt)

        def plain(x: mx.array, residual: mx.array | None) -> mx.array:
            if residual is None:
                return mx.matmul(x, wt, stream=stream)
            return mx.addmm(residual.astype(wt.dtype, stream=stream), x, wt, stream=stream)

        return plain
    w, scales = m.weight[a:b], m.scales[a:b]
    biases = m["biases"][a:b] if m.get("biases") is not None else None
    bias = m["bias"][a:b] if "bias" in m else None
    mode = getattr(m, "mode", "affine")
    mx.eval([a for a in (w, scales, biases, bias) if a is not None])

    ours = isinstance(m, QuantizedLinear)  # else MLX's own product, as a plain `nn.QuantizedLinear` calls it

    def quantized(x: mx.array, residual: mx.array | None) -> mx.array:
        if ours:
            y = quantized_product(x, w, scales, biases, m.group_size, m.bits, mode, stream)
        else:
            y = mx.quantized_matmul(x, w, scales, biases, True, m.group_size, m.bits, mode=mode, stream=stream)
        if bias is not None:
            y = mx.add(y, bias, stream=stream)
        return y if residual is None else mx.add(residual.astype(y.dtype, stream=stream), y, stream=stream)

    return quantized
