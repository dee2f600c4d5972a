"""Our Mimi's own contracts: streaming == batch, reset, causality, shapes, dtypes and input errors."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from conftest import require

require("torch")
require("moshi")
import mimi_reference as ref

FRAMES = 30
PREFIX = 6


def test_streaming_equals_batch():
    batch, stream = ref.ours_batch(FRAMES), ref.ours_stream(FRAMES)
    assert np.abs(stream.latent - batch.latent).max() <= 1e-5
    np.testing.assert_array_equal(stream.codes, batch.codes)
    # Decoding (torch's) codes: the stream and batch code sequences are equal here, see test_mimi_parity.
    if np.array_equal(ref.torch_stream(FRAMES).codes, ref.torch_batch(FRAMES).codes):
        assert np.abs(stream.pcm - batch.pcm).max() <= 1e-5


def test_decode_step_equals_decode_on_same_codes():
    model = ref.ours()
    codes = ref.ours_batch(FRAMES).codes[..., :PREFIX]
    model.reset()
    steps = [model.decode_step(codes[..., t : t + 1]) for t in range(PREFIX)]
    stream = np.array(mx.concatenate(steps, axis=-1))
    model.reset()
    np.testing.assert_allclose(stream, np.array(model.decode(codes)), atol=1e-5, rtol=0)


def test_encode_step_and_decode_step_after_reset_restart_from_scratch():
    model = ref.ours()
    pcm = ref.speech(FRAMES)
    first = ref.ours_stream(FRAMES)  # ran to the end, then reset
    for _ in range(2):
        codes = [model.encode_step(pcm[..., t * ref.FRAME : (t + 1) * ref.FRAME]) for t in range(3)]
        assert all(c.shape == (1, 8, 1) and c.dtype == mx.int32 for c in codes)
        np.testing.assert_array_equal(np.array(mx.concatenate(codes, axis=-1)), first.codes[..., :3])
        out = model.decode_step(ref.torch_stream(FRAMES).codes[..., :1])
        assert out.shape == (1, 1, ref.FRAME) and out.dtype == mx.float32
        np.testing.assert_allclose(np.array(out), first.pcm[..., : ref.FRAME], atol=1e-6, rtol=0)
        model.reset()


def test_causal_prefix_does_not_depend_on_later_audio():
    model = ref.ours()
    full = ref.ours_batch(FRAMES)
    codes = np.array(model.encode(ref.speech(FRAMES)[..., : PREFIX * ref.FRAME]))
    np.testing.assert_array_equal(codes, full.codes[..., :PREFIX])
    pcm = np.array(model.decode(ref.torch_batch(FRAMES).codes[..., :PREFIX]))
    np.testing.assert_allclose(pcm, full.pcm[..., : PREFIX * ref.FRAME], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "pcm,match",
    [
        (np.zeros((1, 1920), np.float32), r"expected pcm \[B, 1, T\], got shape \(1, 1920\)"),
        (np.zeros((1, 2, 1920), np.float32), r"got shape \(1, 2, 1920\)"),
        (np.zeros((1, 1, 2000), np.float32), r"pcm length 2000 .* not a positive multiple of 1920"),
        (np.zeros((1, 1, 0), np.float32), r"pcm length 0"),
        (np.zeros((1, 1, 1920), np.int16), r"expected float pcm, got dtype .*int16"),
    ],
)
def test_encode_rejects_bad_pcm(pcm, match):
    with pytest.raises(ValueError, match=match):
        ref.ours().encode(pcm)


def test_encode_step_rejects_more_than_one_frame():
    model = ref.ours()
    with pytest.raises(ValueError, match=r"Mimi.encode_step: expected pcm \[B, 1, 1920\], got shape \(1, 1, 3840\)"):
        model.encode_step(np.zeros((1, 1, 3840), np.float32))
    model.reset()


@pytest.mark.parametrize(
    "codes,match",
    [
        (np.zeros((1, 8), np.int32), r"expected codes \[B, K<=8, T>0\], got shape \(1, 8\)"),
        (np.zeros((1, 9, 2), np.int32), r"got shape \(1, 9, 2\)"),
        (np.zeros((1, 8, 2), np.float32), r"expected integer codes, got dtype .*float32"),
        (np.full((1, 8, 2), 2048, np.int32), r"range over \[2048, 2048\], outside \[0, 2047\]"),
        (np.full((1, 8, 2), -1, np.int64), r"range over \[-1, -1\]"),
    ],
)
def test_decode_rejects_bad_codes(codes, match):
    with pytest.raises(ValueError, match=match):
        ref.ours().decode(codes)


def test_decode_step_rejects_more_than_one_frame():
    with pytest.raises(ValueError, match=r"Mimi.decode_step: expected codes \[B, K, 1\], got shape \(1, 8, 2\)"):
        ref.ours().decode_step(np.zeros((1, 8, 2), np.int32))
