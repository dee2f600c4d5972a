"""Our MLX Mimi streams for as long as anyone talks: past rustymimi's 4096-frame limit, flat memory.

A small Mimi with the published one's streaming structure (2 transformer steps per frame, RoPE at
the absolute position, a `context`-step attention window held in ring KV caches) keeps the 4200
frames to about 15 s (a `slow` test).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from moshi_mlx.config import MimiConfig, SeanetConfig, TransformerConfig
from moshi_mlx.models.mimi import Mimi
from moshi_mlx.modules.kv_cache import RingKVCache

CONTEXT = 8  # transformer steps; the published Mimi has 250
FRAMES = 4200  # > 4096, where rustymimi stops (its rotary table: 8192 steps at 2 per frame)


def small_mimi() -> Mimi:
    cfg = MimiConfig(
        seanet=SeanetConfig(dimension=16, n_filters=4, ratios=[4, 4, 2]),
        transformer=TransformerConfig(
            d_model=16,
            num_heads=2,
            num_layers=2,
            dim_feedforward=32,
            causal=True,
            context=CONTEXT,
            positional_embedding="rope",
            norm="layer_norm",
            layer_scale=0.01,
        ),
        sample_rate=800,  # 64-sample frames, SEANet hop 32: 2 transformer steps per frame, as published
        quantizer_dimension=8,
        quantizer_n_q=4,
        quantizer_bins=16,
        num_codebooks=4,
    )
    mx.random.seed(0)
    model = Mimi(cfg)
    # Random codebooks, so that codes vary (the default ones are all equal).
    for rvq in (model.quantizer.rvq_first, model.quantizer.rvq_rest):
        for book in rvq.codebooks:
            book.embedding = mx.random.normal(book.embedding.shape) * 0.1
    mx.eval(model.parameters())
    return model


def signal(frames: int, frame: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(frames * frame)
    x = 0.3 * np.sin(2 * np.pi * t * (0.01 + 0.002 * np.sin(t / 5000))) + 0.05 * rng.standard_normal(len(t))
    return x.astype(np.float32)[None, None]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.slow  # 4200 frames: about 15 s
def test_streams_past_4096_frames_with_flat_memory():
    model = small_mimi()
    fs = model.frame_size
    pcm = signal(97, fs)  # frames repeat every 97: the stream is long, the input array is not
    marks = {}
    for t in range(FRAMES):
        k = t % 97
        codes = model.encode_step(pcm[..., k * fs : (k + 1) * fs])
        out = model.decode_step(codes)
        mx.eval(codes, out)
        if t + 1 in (500, FRAMES):
            marks[t + 1] = rss_mb()
    assert codes.shape == (1, 4, 1) and out.shape == (1, 1, fs)
    assert np.isfinite(np.array(out)).all()
    st = model.stream_state
    for cache in st.encoder_cache + st.decoder_cache:
        assert isinstance(cache, RingKVCache)
        assert cache.offset == 2 * FRAMES  # RoPE positions went past 8192
        assert cache.keys.shape[2] <= CONTEXT  # what is held stays the attention window
    # A growing cache here would add only ~2 MB (3700 frames x 2 steps x 2 layers x K,V x 16 floats x 2
    # transformers); the bound is for everything else: allocator caches settle within a few MB.
    assert marks[FRAMES] - marks[500] <= 16, marks


def test_streaming_equals_batch_after_the_ring_wraps():
    model = small_mimi()
    fs, frames = model.frame_size, 30  # 60 transformer steps: the 8-step ring wraps 7 times
    pcm = signal(frames, fs)
    batch_latent = model.encode_latent(pcm)
    # Random codes (random SEANet weights give a nearly constant latent, hence nearly constant codes).
    codes = mx.array(np.random.default_rng(1).integers(0, 16, (1, 4, frames)), dtype=mx.int32)
    batch_pcm = model.decode(codes)
    model.reset()
    stream_latent = mx.concatenate(
        [model.encode_latent_step(pcm[..., t * fs : (t + 1) * fs]) for t in range(frames)], 1
    )
    stream_pcm = mx.concatenate([model.decode_step(codes[..., t : t + 1]) for t in range(frames)], -1)
    assert float(mx.abs(stream_latent - batch_latent).max()) <= 1e-5
    assert float(mx.abs(stream_pcm - batch_pcm).max()) <= 1e-5
