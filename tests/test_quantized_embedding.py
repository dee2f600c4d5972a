"""`nn.quantize` keeps the zero-token (-1) semantics of `ScaledEmbedding`."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from moshi_mlx.models.lm import QuantizedScaledEmbedding, ScaledEmbedding


@pytest.mark.parametrize("bits,group_size", [(4, 32), (8, 64)])
def test_quantized_scaled_embedding_keeps_zero_token(bits, group_size):
    emb = ScaledEmbedding(12, 64)
    holder = nn.Sequential(emb)
    tokens = mx.array([[3, -1, 0, 11], [-1, -1, 5, 2]])
    nn.quantize(holder, group_size=group_size, bits=bits)
    quant = holder.layers[0]
    assert isinstance(quant, QuantizedScaledEmbedding)
    got = np.array(quant(tokens))
    # Every other token equals the plain dequantized table row.
    table = np.array(mx.dequantize(quant.weight, quant.scales, quant.biases, group_size, bits))
    ids = np.array(tokens)
    for (b, t), tok in np.ndenumerate(ids):
        expected = np.zeros(64, np.float32) if tok == -1 else table[tok]
        np.testing.assert_array_equal(got[b, t], expected)
    assert np.all(got[ids == -1] == 0) and np.all(np.abs(got[ids != -1]).sum(-1) > 0)


def test_low_rank_embedding_is_not_quantized_as_a_whole():
    emb = ScaledEmbedding(12, 64, low_rank=32)
    with pytest.raises(ValueError, match="low_rank"):
        emb.to_quantized(32, 4)
    holder = nn.Sequential(emb)
    nn.quantize(holder, group_size=32, bits=4)  # only its leaf Linear is quantized
    assert isinstance(holder.layers[0], ScaledEmbedding)
    assert isinstance(holder.layers[0].low_rank, nn.QuantizedLinear)
    assert float(mx.abs(holder.layers[0](mx.array([[-1]]))).sum()) == 0.0
