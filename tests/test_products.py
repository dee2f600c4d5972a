"""The frame's ways of applying Linear layers (`models.products`): products split by output
columns across CPU streams give exactly what the whole product gives, for fp32, bf16 and quantized
weights, one row or two, eagerly and compiled; and the whole product gives what calling the module
gives (a residual fused into a bf16 product is rounded once instead of twice)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from moshi_mlx.config import LmConfig
from moshi_mlx.models import products
from moshi_mlx.models.lm import Lm
from moshi_mlx.models.products import _column_blocks, cpu_streams, transposed_linear
from moshi_mlx.modules.quantized import QuantizedLinear
from moshi_mlx.modules.transformer import call
from moshi_mlx.weights.quantize import quantize_lm

CONFIG = dict(
    dim=64, text_card=200, n_q=4, dep_q=2, card=96, num_heads=2, num_layers=2, hidden_scale=4.125,
    context=50, gating="silu", norm="rms_norm_f32", positional_embedding="rope",
    depformer_dim=64, depformer_dim_feedforward=160, depformer_num_heads=2, depformer_num_layers=2,
    depformer_multi_linear=True, depformer_weights_per_step=True, depformer_pos_emb="none",
    delays=[0, 0, 1, 0, 1],
)


def model(precision: str) -> Lm:
    mx.random.seed(0)
    lm = Lm(LmConfig.from_kyutai_json(CONFIG))
    lm.set_dtype(mx.float32 if precision == "fp32" else mx.bfloat16)
    if precision in ("q8", "q4"):
        quantize_lm(lm, int(precision[1]), group_size=32)
    mx.eval(lm.parameters())
    return lm


def split_everything(monkeypatch) -> None:
    """Every product that has 2+ column blocks is split, whatever its size."""
    monkeypatch.setattr(products, "SPLIT_MIN_WEIGHTS", 0)


def linears(lm: Lm) -> list[nn.Module]:
    return [m for _, m in lm.named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "q8", "q4"])
@pytest.mark.parametrize("rows", [1, 2])
def test_split_products_equal_the_module_calls(precision, rows, monkeypatch):
    split_everything(monkeypatch)
    lm = model(precision)
    modules = linears(lm)
    assert (precision[0] == "q") == any(isinstance(m, nn.QuantizedLinear) for m in modules)
    split = [m for m in modules if _column_blocks(m, 3) is not None]
    assert len(split) >= len(modules) - 2  # all but the narrowest (16-column blocks)
    whole, apply = transposed_linear(lm), transposed_linear(lm, parts=3)
    rng = np.random.default_rng(1)
    for m in modules:
        quantized = isinstance(m, nn.QuantizedLinear)
        n_out, n_in = m.weight.shape[0], m.scales.shape[-1] * m.group_size if quantized else m.weight.shape[-1]
        dtype = m.scales.dtype if quantized else m.weight.dtype
        x = mx.array(rng.standard_normal((rows, n_in)).astype(np.float32)).astype(dtype)
        r = mx.array(rng.standard_normal((rows, n_out)).astype(np.float32))  # the residual is cast as `call` does
        want = whole(m, x), whole(m, x, r)
        eager = apply(m, x), apply(m, x, r)
        compiled = mx.compile(lambda x, r: (apply(m, x), apply(m, x, r)))(x, r)  # noqa: B023
        for got in (eager, compiled):
            for g, w in zip(got, want):
                assert g.dtype == w.dtype and mx.array_equal(g, w).item()
        assert mx.array_equal(want[0], call(m, x)).item()
        if quantized or dtype == mx.float32:
            assert mx.array_equal(want[1], call(m, x, r)).item()
        else:  # fused: one rounding of product + residual, where `call` rounds the product first
            assert mx.allclose(want[1], call(m, x, r), rtol=1e-2, atol=1e-2).item()


def test_split_products_hold_views_not_copies(monkeypatch):
    """The column blocks are views of the weights: building them allocates nothing."""
    split_everything(monkeypatch)
    for precision in ("fp32", "q4"):
        lm = model(precision)
        active = mx.get_active_memory()
        transposed_linear(lm, parts=3)
        assert mx.get_active_memory() <= active + 16 * 1024
    assert _column_blocks(lm.text_linear, 3) is not None
    assert len(cpu_streams(3)) == 3 and cpu_streams(3)[0] == mx.default_stream(mx.cpu)


def test_products_split_from_the_same_size_plain_or_quantized():
    """A product of `SPLIT_MIN_WEIGHTS` weights is split, plain or quantized (ours or MLX's own
    layer); one of fewer weights is not."""
    n_in, n_out = 256, products.SPLIT_MIN_WEIGHTS // 256
    plain = nn.Linear(n_in, n_out, bias=False)
    narrower = nn.Linear(n_in, n_out - 16, bias=False)
    for m in (plain, QuantizedLinear.from_linear(plain, 32, 4), nn.QuantizedLinear.from_linear(plain, 32, 4)):
        assert _column_blocks(m, 2) is not None
    for m in (narrower, QuantizedLinear.from_linear(narrower, 32, 4)):
        assert _column_blocks(m, 2) is None


def test_same_products_compares_bit_for_bit():
    """`same_products` holds for a weight and its `[in, out]` copy exactly when every product of 1, 2
    and 4 rows is bitwise equal, and fails when a single weight differs (by a thousandth)."""
    w = mx.random.normal((48, 80), key=mx.random.key(3))
    laid = mx.contiguous(w.T).T
    x = mx.random.normal((4, 80), key=mx.random.key(0))
    alike = all(mx.array_equal(x[:n] @ w.T, x[:n] @ laid.T).item() for n in (1, 2, 4))
    assert products.same_products(w, laid) == alike
    assert products.same_products(w, mx.array(w))  # same layout, same kernel
    off = mx.where((mx.arange(48)[:, None] == 5) & (mx.arange(80)[None] == 7), w * 1.001, w)
    assert not products.same_products(w, off)


def test_layouts_that_sum_differently_are_left_alone(monkeypatch):
    """Where the BLAS sums the two layouts differently (`same_products` false), no weight is laid out."""
    lm = model("fp32")
    monkeypatch.setattr(products, "same_products", lambda *a: False)
    assert products.lay_out_for_cpu_blas(lm) == frozenset()
    assert all(not np.asarray(m.weight).flags["F_CONTIGUOUS"] for m in linears(lm))
