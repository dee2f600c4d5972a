"""Streaming conv, SEANet and quantizer: batch == streaming, causality, and equality with torch moshi."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from conftest import require

from moshi_mlx.config import SeanetConfig
from moshi_mlx.modules.conv import StreamingConv1d, StreamingConvTranspose1d
from moshi_mlx.modules.quantizer import Codebook, SplitResidualVectorQuantizer
from moshi_mlx.modules.seanet import SeanetDecoder, SeanetEncoder


def _torch_reference():
    """torch and Kyutai's streaming convs; only the tests comparing with them need these."""
    torch = require("torch")
    require("moshi")
    from moshi.modules.conv import StreamingConv1d, StreamingConvTranspose1d

    return torch, StreamingConv1d, StreamingConvTranspose1d


def _np(x: mx.array) -> np.ndarray:
    return np.array(x.astype(mx.float32))


def _stream(module, x: mx.array, chunk: int) -> mx.array:
    return mx.concatenate([module.step(x[:, i : i + chunk]) for i in range(0, x.shape[1], chunk)], axis=1)


CONV_CASES = [  # (k, stride, dilation, groups, pad_mode)
    (7, 1, 1, 1, "constant"), (3, 1, 2, 1, "constant"), (8, 4, 1, 1, "constant"),
    (4, 2, 1, 1, "replicate"), (4, 2, 1, 3, "constant"), (1, 1, 1, 1, "replicate"), (5, 5, 1, 1, "replicate"),
]


@pytest.mark.parametrize("k,stride,dilation,groups,pad_mode", CONV_CASES)
def test_conv1d_matches_torch_batch_and_streaming(k, stride, dilation, groups, pad_mode):
    torch, TorchConv1d, TorchConvTr1d = _torch_reference()
    mx.random.seed(0)
    cin, cout, frames = 6, 9, 12
    conv = StreamingConv1d(cin, cout, k, stride, dilation, groups, pad_mode=pad_mode)
    conv.bias = mx.random.normal((cout,))
    ref = TorchConv1d(cin, cout, k, stride, dilation, groups, causal=True, pad_mode=pad_mode).eval()
    with torch.no_grad():
        ref.conv.conv.weight.copy_(torch.from_numpy(_np(conv.weight).transpose(0, 2, 1)))
        ref.conv.conv.bias.copy_(torch.from_numpy(_np(conv.bias)))
    x = mx.random.normal((2, frames * stride, cin))
    xt = torch.from_numpy(_np(x).transpose(0, 2, 1).copy())
    with torch.no_grad():
        expected = ref(xt).numpy().transpose(0, 2, 1)
    np.testing.assert_allclose(_np(conv(x)), expected, atol=1e-5)
    for chunk_frames in (1, 3):
        conv.reset()
        np.testing.assert_allclose(_np(_stream(conv, x, chunk_frames * stride)), expected, atol=1e-5)


@pytest.mark.parametrize("k,stride,groups", [(16, 8, 1), (4, 2, 1), (4, 2, 6), (5, 2, 1), (6, 3, 2), (3, 3, 1)])
def test_conv_transpose1d_matches_torch_batch_and_streaming(k, stride, groups):
    torch, TorchConv1d, TorchConvTr1d = _torch_reference()
    mx.random.seed(1)
    cin, cout, frames = 6, 6, 10
    conv = StreamingConvTranspose1d(cin, cout, k, stride, groups)
    conv.bias = mx.random.normal((cout,))
    ref = TorchConvTr1d(cin, cout, k, stride, groups, causal=True).eval()
    # ours [out, k, in/g] -> torch [in, out/g, k]
    g, opg, ipg = groups, cout // groups, cin // groups
    w = _np(conv.weight).reshape(g, opg, k, ipg).transpose(0, 3, 1, 2).reshape(cin, opg, k)
    with torch.no_grad():
        ref.convtr.convtr.weight.copy_(torch.from_numpy(w.copy()))
        ref.convtr.convtr.bias.copy_(torch.from_numpy(_np(conv.bias)))
    x = mx.random.normal((2, frames, cin))
    xt = torch.from_numpy(_np(x).transpose(0, 2, 1).copy())
    with torch.no_grad():
        expected = ref(xt).numpy().transpose(0, 2, 1)
    np.testing.assert_allclose(_np(conv(x)), expected, atol=1e-5)
    for chunk in (1, 2):
        conv.reset()
        np.testing.assert_allclose(_np(_stream(conv, x, chunk)), expected, atol=1e-5)


def test_conv_rejects_bad_input():
    conv = StreamingConv1d(4, 4, 4, stride=2)
    with pytest.raises(ValueError, match=r"not a positive multiple of the stride 2"):
        conv(mx.zeros((1, 5, 4)))
    with pytest.raises(ValueError, match=r"expected input \[B, T, 4\], got shape \(1, 4, 3\)"):
        conv.step(mx.zeros((1, 4, 3)))


SMALL_SEANET = SeanetConfig(dimension=16, n_filters=4, ratios=[4, 3, 2], n_residual_layers=2)


def test_seanet_streaming_equals_batch_and_is_causal():
    mx.random.seed(2)
    enc, dec = SeanetEncoder(SMALL_SEANET), SeanetDecoder(SMALL_SEANET)
    hop = SMALL_SEANET.hop_length
    x = mx.random.normal((2, 10 * hop, 1))
    z = enc(x)
    y = dec(z)
    assert z.shape == (2, 10, 16) and y.shape == (2, 10 * hop, 1)
    for _ in range(2):  # the second round checks reset()
        enc.reset()
        dec.reset()
        np.testing.assert_allclose(_np(_stream(enc, x, 2 * hop)), _np(z), atol=1e-5)
        np.testing.assert_allclose(_np(_stream(dec, z, 1)), _np(y), atol=1e-5)
    np.testing.assert_allclose(_np(enc(x[:, : 4 * hop])), _np(z[:, :4]), atol=1e-5)
    np.testing.assert_allclose(_np(dec(z[:, :4])), _np(y[:, : 4 * hop]), atol=1e-5)


def test_seanet_matches_torch():
    torch, TorchConv1d, TorchConvTr1d = _torch_reference()
    from moshi.modules.seanet import SEANetDecoder as TorchDec
    from moshi.modules.seanet import SEANetEncoder as TorchEnc

    kwargs = dict(channels=1, dimension=16, n_filters=4, ratios=[4, 3, 2], n_residual_layers=2, causal=True,
                  pad_mode="constant", kernel_size=7, last_kernel_size=3, residual_kernel_size=3, compress=2)
    torch.manual_seed(0)
    tenc, tdec = TorchEnc(**kwargs).eval(), TorchDec(**kwargs).eval()
    enc, dec = SeanetEncoder(SMALL_SEANET), SeanetDecoder(SMALL_SEANET)
    for ours, ref in ((enc, tenc), (dec, tdec)):
        torch_convs = [m for m in ref.modules() if isinstance(m, (TorchConv1d, TorchConvTr1d))]
        our_convs = _in_forward_order(ours)
        assert len(torch_convs) == len(our_convs)
        for t, o in zip(torch_convs, our_convs):
            if isinstance(t, TorchConv1d):
                o.weight = mx.array(t.conv.conv.weight.detach().numpy().transpose(0, 2, 1))
                o.bias = mx.array(t.conv.conv.bias.detach().numpy())
            else:
                o.weight = mx.array(t.convtr.convtr.weight.detach().numpy().transpose(1, 2, 0))
                o.bias = mx.array(t.convtr.convtr.bias.detach().numpy())
    x = np.random.default_rng(0).standard_normal((2, 1, 8 * 24)).astype(np.float32)
    with torch.no_grad():
        z_ref = tenc(torch.from_numpy(x))
        y_ref = tdec(z_ref).numpy()
    z = enc(mx.array(x.transpose(0, 2, 1)))
    np.testing.assert_allclose(_np(z).transpose(0, 2, 1), z_ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(_np(dec(z)).transpose(0, 2, 1), y_ref, atol=1e-5)


def _in_forward_order(seanet) -> list:
    convs = [seanet.init_conv]
    for stage in seanet.stages:
        if hasattr(stage, "upsample"):
            convs.append(stage.upsample)
        for block in stage.residuals:
            convs.extend(block.convs)
        if hasattr(stage, "downsample"):
            convs.append(stage.downsample)
    return convs + [seanet.final_conv]


def test_codebook_nearest_matches_torch_cdist():
    torch, _, _ = _torch_reference()
    from moshi.quantization.core_vq import EuclideanCodebook

    rng = np.random.default_rng(3)
    emb = rng.standard_normal((64, 8)).astype(np.float32)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    ref = EuclideanCodebook(8, 64)
    ref.embedding_sum.copy_(torch.from_numpy(emb))
    expected = ref.encode(torch.from_numpy(x)).numpy()
    cb = Codebook(8, 64)
    cb.embedding = mx.array(emb)
    np.testing.assert_array_equal(np.array(cb.encode(mx.array(x))), expected)


def test_split_rvq_decode_is_sum_and_codes_are_int32():
    mx.random.seed(4)
    q = SplitResidualVectorQuantizer(dim=8, input_dim=12, n_q=4, bins=32)
    for rvq in (q.rvq_first, q.rvq_rest):
        for cb in rvq.codebooks:
            cb.embedding = mx.random.normal((32, 8))
    x = mx.random.normal((2, 5, 12))
    codes = q.encode(x)
    assert codes.shape == (2, 4, 5) and codes.dtype == mx.int32
    first = q.rvq_first.output_proj(q.rvq_first.codebooks[0].decode(codes[:, 0]))
    rest = sum(q.rvq_rest.codebooks[k].decode(codes[:, k + 1]) for k in range(3))
    np.testing.assert_allclose(_np(q.decode(codes)), _np(first + q.rvq_rest.output_proj(rest)), atol=1e-5)
