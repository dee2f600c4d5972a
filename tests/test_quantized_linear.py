"""`QuantizedLinear`: on the CPU, bf16/fp16 quantized products accumulate in fp32 and round once."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from moshi_mlx.modules.quantized import QuantizedLinear, quantize_modules, quantized_product
from moshi_mlx.weights.quantize import quantize_lm


def layer(dtype: mx.Dtype, bits: int, n_in: int = 2048, n_out: int = 96, bias: bool = False) -> QuantizedLinear:
    mx.random.seed(bits)
    dense = nn.Linear(n_in, n_out, bias=bias)
    dense.weight = mx.random.normal((n_out, n_in)) * 0.05
    if bias:
        dense.bias = mx.random.normal((n_out,))
    dense.set_dtype(dtype)
    return QuantizedLinear.from_linear(dense, 64, bits)


def exact(m: nn.QuantizedLinear, x: mx.array) -> np.ndarray:
    """The layer's product in float64 from its weights dequantized in fp32."""
    f32 = [None if a is None else a.astype(mx.float32) for a in (m.scales, m.get("biases"))]
    w = mx.dequantize(m.weight, *f32, m.group_size, m.bits)
    y = np.array(x.astype(mx.float32), dtype=np.float64) @ np.array(w, dtype=np.float64).T
    return y + np.array(m.bias.astype(mx.float32), dtype=np.float64) if "bias" in m else y


def ulp(y: np.ndarray, mantissa_bits: int) -> np.ndarray:
    """The spacing of a float with `mantissa_bits` explicit bits at the magnitude of `y`."""
    return 2.0 ** (np.floor(np.log2(np.maximum(np.abs(y), 1e-30))) - mantissa_bits)


@pytest.mark.parametrize("dtype, mantissa", [(mx.bfloat16, 7), (mx.float16, 10)])
@pytest.mark.parametrize("bits", [4, 8])
def test_low_precision_products_are_the_exact_product_rounded_once(dtype, mantissa, bits):
    """Within 1.5 units in the last place of the exact product (rounding alone: half of one; the
    rest covers the fp32 sum's own error near a binade's edge), where MLX's CPU kernel, which
    accumulates in bf16/fp16, errs by thousands (printed)."""
    m = layer(dtype, bits)
    x = mx.random.normal((3, 2048), key=mx.random.key(1)).astype(dtype)
    want = exact(m, x)
    with mx.stream(mx.cpu):  # the CPU product, whatever the default device (left as it was)
        got = m(x)
        theirs = nn.QuantizedLinear.__call__(m, x)  # MLX's own layer, same parameters
    assert got.dtype == dtype and got.shape == (3, 96)
    err = np.abs(np.array(got.astype(mx.float32), dtype=np.float64) - want) / ulp(want, mantissa)
    assert err.max() <= 1.5
    their_err = np.abs(np.array(theirs.astype(mx.float32), dtype=np.float64) - want) / ulp(want, mantissa)
    print(f"{dtype} q{bits}: ours {err.max():.2f} ulp, MLX's CPU kernel {their_err.max():.1f} ulp")


def test_fp32_products_are_mlx_own():
    m = layer(mx.float32, 4)
    x = mx.random.normal((2, 2048), key=mx.random.key(2))
    assert mx.array_equal(m(x), nn.QuantizedLinear.__call__(m, x)).item()


def test_stream_names_the_device():
    """`stream` decides the device, whatever the default is."""
    m = layer(mx.bfloat16, 4)
    x = mx.random.normal((1, 2048), key=mx.random.key(3)).astype(mx.bfloat16)
    args = (m.weight, m.scales, m.biases, m.group_size, m.bits)
    on_cpu = quantized_product(x, *args, stream=mx.default_stream(mx.cpu))
    assert mx.array_equal(on_cpu, m(x)).item()
    f32 = mx.quantized_matmul(x.astype(mx.float32), m.weight, m.scales.astype(mx.float32),
                              m.biases.astype(mx.float32), True, m.group_size, m.bits)
    assert mx.array_equal(on_cpu, f32.astype(mx.bfloat16)).item()


def test_quantize_modules_builds_ours_where_nn_quantize_builds_mlx_own():
    """Same choice of modules, same packed parameters; Linear layers become `QuantizedLinear`."""

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 64)
            self.layers = [nn.Linear(64, 32, bias=False), nn.Linear(32, 64, bias=True), nn.Linear(48, 8)]

    mx.random.seed(0)
    ours, theirs = Holder(), Holder()
    theirs.update(ours.parameters())

    def predicate(path, m):
        return hasattr(m, "to_quantized") and m.weight.shape[-1] % 32 == 0

    quantize_modules(ours, 32, 4, predicate)
    nn.quantize(theirs, 32, 4, class_predicate=predicate)
    assert [type(m) for m in ours.layers] == [QuantizedLinear, QuantizedLinear, nn.Linear]
    assert isinstance(ours.emb, nn.QuantizedEmbedding)
    a, b = dict(tree_flatten(ours.parameters())), dict(tree_flatten(theirs.parameters()))
    assert a.keys() == b.keys() and all(mx.array_equal(a[k], b[k]).item() for k in a)


def test_loaded_and_converted_models_use_ours():
    """A quantized checkpoint loads into `QuantizedLinear` layers, and `quantize_lm` makes them."""
    from kyutai_mlx_fixture import ASSETS, FILES

    from moshi_mlx.weights import load_lm

    for model in (load_lm(ASSETS / FILES["q4"]), load_lm(ASSETS / FILES["bf16"])):
        if type(model.text_linear) is nn.Linear:
            quantize_lm(model, 8)
        quantized = [m for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
        assert quantized and all(type(m) is QuantizedLinear for m in quantized)
