"""How many primitives one steady-state frame of the GPU (fused-kernel) formulation runs, by kind.

On a GPU at batch 1 a 7B frame is bound by what MLX does per primitive (host work, a node in a
CUDA graph, a kernel launch), not by its weights; this counts them on any machine, for the layer
counts of the 7B model (the count does not depend on the widths, so small ones are used).

Quantized products are MLX's own there (`modules.quantized.quantized_product` computes in fp32 on
a CPU only), and so they are counted; `mx.dequantize` (quantized embeddings) is one kernel there,
counted as one node here. MLX's CUDA backend has one kernel each for `mx.fast.rms_norm`, `mx.fast.rope` and an unmasked
`mx.fast.scaled_dot_product_attention` of one query; a CPU expands them into several primitives.
So here rms_norm and rope stand as one node each, and each unmasked attention's expansion (5
nodes) is counted as one. A masked attention is expanded on CUDA too (its fused kernels take no
array mask) and is counted as it is. Views (reshape, split, slice, transpose...) run no kernel;
they are counted apart.

    python -m benchmarks.gpu_frame_nodes [--bits 4|8] [--json]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from dataclasses import replace

import mlx.core as mx

VIEWS = {"Reshape", "Split", "Slice", "Squeeze", "Transpose", "ExpandDims", "Broadcast", "AsStrided"}
TINY_WIDTHS = {"dim": 64, "num_heads": 4, "depformer_dim": 64, "depformer_num_heads": 4, "hidden_scale": 4.0,
               "depformer_dim_feedforward": 256, "text_card": 1000, "card": 256}


def frame_primitives(bits: int | None = None, layout: dict | None = None) -> collections.Counter:
    """Primitives by kind of frame 0 (a partly filled KV buffer: its attention is masked, as in
    the first `context` frames of a stream) of the 7B layout with `TINY_WIDTHS` (and `layout`),
    bf16 or `bits`-bit weights, run in the GPU formulation on the default device."""
    from moshi_mlx.cli.bench_worker import unevaluated_primitives
    from moshi_mlx.config import LmConfig
    from moshi_mlx.generate import LmGen
    from moshi_mlx.models.lm import Lm
    from moshi_mlx.modules import quantized
    from moshi_mlx.weights.quantize import quantize_lm

    mx.random.seed(0)
    lm = Lm(LmConfig.from_kyutai_json({**LmConfig.from_preset("moshi_7b").raw, **TINY_WIDTHS, **(layout or {})}))
    lm.set_dtype(mx.bfloat16)
    if bits:
        quantize_lm(lm, group_size=32, bits=bits)
    mx.eval(lm.parameters())

    kinds: collections.Counter = collections.Counter()
    unmasked = [0]
    fast = (mx.fast.rms_norm, mx.fast.rope, mx.fast.scaled_dot_product_attention, mx.async_eval, mx.dequantize)
    low_precision = quantized._LOW_PRECISION

    def attention(q, k, v, scale, mask=None, **kw):
        unmasked[0] += mask is None
        return fast[2](q, k, v, scale=scale, mask=mask, **kw)

    dequantized = [0]

    def dequantize(w, scales, biases=None, group_size=64, bits=4, **kw):
        # One node of the result's shape and dtype; it reads `scales` only, so the gathers of the
        # rows of `w` and `biases` drop out of the graph: they are added back below.
        dequantized[0] += 1
        columns = mx.array([j // group_size for j in range(w.shape[-1] * 32 // bits)])
        return mx.take(scales, columns, axis=-1)

    def count_and_start(*roots) -> None:
        kinds.update(unevaluated_primitives(*roots))
        fast[3](*roots)

    mx.fast.rms_norm = lambda x, weight, eps: mx.cumsum(x, axis=-1)  # one node of the same shape
    mx.fast.rope = lambda x, *args, **kwargs: mx.cumsum(x, axis=-1)
    mx.fast.scaled_dot_product_attention = attention
    mx.async_eval, mx.dequantize = count_and_start, dequantize
    quantized._LOW_PRECISION = ()  # the GPU's quantized product: MLX's own
    try:
        gen = LmGen(lm, seed=0)
        gen._spec = replace(gen._spec, lean=False)  # the GPU formulation, whatever the device
        gen.reset()
        out = gen.step(mx.zeros((1, lm.cfg.n_q - lm.cfg.dep_q), dtype=mx.int32))  # frame 0: traced, counted
        mx.eval(gen.tokens if out is None else out)
    finally:
        mx.fast.rms_norm, mx.fast.rope, mx.fast.scaled_dot_product_attention, mx.async_eval, mx.dequantize = fast
        quantized._LOW_PRECISION = low_precision
    kinds["Matmul"] -= 2 * unmasked[0]  # each unmasked attention as the one node CUDA runs
    for kind in ("CompiledBroadcastMultiply", "Transpose"):
        kinds[kind] -= unmasked[0]
    kinds["Softmax"] -= unmasked[0]
    kinds["ScaledDotProductAttention"] += unmasked[0]
    kinds["RMSNorm|RoPE"] = kinds.pop("CumSum")
    kinds["Dequantize"] = dequantized[0]
    kinds["Gather"] += dequantized[0]  # of the rows of `w` and `biases`, less the stand-in's own
    return +kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, choices=[4, 8], help="quantized weights (default bf16)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()
    kinds = frame_primitives(args.bits)
    views = sum(n for k, n in kinds.items() if k in VIEWS)
    total = sum(kinds.values())
    if args.json:
        print(json.dumps({"primitives": total, "views": views, "kernels": total - views, "by_kind": dict(kinds)}))
        return
    print(f"7B layout, {'q%d' % args.bits if args.bits else 'bf16'}: {total} primitives per frame, "
          f"{views} of them views, {total - views} kernels")
    for kind, n in kinds.most_common():
        print(f"{n:6d}  {kind[:100]}{' (view)' if kind in VIEWS else ''}")


if __name__ == "__main__":
    sys.exit(main())
