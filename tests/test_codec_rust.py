"""The same checkpoint in rustymimi (Kyutai's Rust Mimi) and ours; the `rust` backend's interface."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from conftest import require

require("torch")
require("moshi")
require("rustymimi")
import mimi_reference as ref

from moshi_mlx.models.codec import RustMimi
from moshi_mlx.weights.mimi import load_mimi_backend

FRAMES = 30
MIN_AGREEMENT = 0.99
# candle and torch/MLX accumulate fp32 convs/matmuls in different orders; over ~30 layers that gives
# differences of ~1e-6 on audio of amplitude ~0.5 (measured 1e-6); 1e-5 leaves 10x headroom.
PCM_ATOL = 1e-5


def test_codes_agree_with_rustymimi_batch_and_streaming():
    pcm = ref.speech(FRAMES)
    tok = ref.rust_tokenizer()
    batch = tok.encode(pcm)
    tok.reset()
    stream = np.concatenate([tok.encode_step(pcm[..., t * ref.FRAME : (t + 1) * ref.FRAME]) for t in range(FRAMES)], -1)
    tok.reset()
    assert batch.dtype == np.uint32 and batch.shape == (1, 8, FRAMES)
    assert (batch == ref.ours_batch(FRAMES).codes).mean() >= MIN_AGREEMENT
    assert (stream == ref.ours_stream(FRAMES).codes).mean() >= MIN_AGREEMENT


def test_decode_agrees_with_rustymimi():
    tok = ref.rust_tokenizer()
    codes = ref.torch_batch(FRAMES).codes
    pcm = tok.decode(codes.astype(np.uint32))
    assert np.abs(pcm - ref.ours_batch(FRAMES).pcm).max() <= PCM_ATOL
    codes = ref.torch_stream(FRAMES).codes
    tok.reset()
    pcm = np.concatenate([tok.decode_step(codes[..., t : t + 1].astype(np.uint32)) for t in range(FRAMES)], -1)
    tok.reset()
    assert np.abs(pcm - ref.ours_stream(FRAMES).pcm).max() <= PCM_ATOL


def test_rust_backend_has_our_interface():
    rust = load_mimi_backend(ref.fixture_path(), backend="rust")
    assert isinstance(rust, RustMimi)
    pcm = ref.speech(FRAMES)[..., : 2 * ref.FRAME]
    codes = rust.encode(pcm)
    assert codes.shape == (1, 8, 2) and codes.dtype == mx.int32
    np.testing.assert_array_equal(np.array(codes), ref.ours_batch(FRAMES).codes[..., :2])
    out = rust.decode(codes)
    assert out.shape == (1, 1, 2 * ref.FRAME) and out.dtype == mx.float32
    step = rust.encode_step(mx.array(pcm[..., : ref.FRAME]))
    assert step.shape == (1, 8, 1) and step.dtype == mx.int32
    frame = rust.decode_step(step)
    assert frame.shape == (1, 1, ref.FRAME) and frame.dtype == mx.float32
    rust.reset()
    with pytest.raises(ValueError, match=r"not a positive multiple of 1920"):
        rust.encode(np.zeros((1, 1, 100), np.float32))
    with pytest.raises(ValueError, match=r"expected integer codes"):
        rust.decode(np.zeros((1, 8, 1), np.float32))
    with pytest.raises(ValueError, match="unknown Mimi backend 'torch'"):
        load_mimi_backend(ref.fixture_path(), backend="torch")
