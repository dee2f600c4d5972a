"""Long streaming runs: no length limit, constant memory (ring KV cache)."""

from __future__ import annotations

import time

import mlx.core as mx
import numpy as np
import pytest

from moshi_mlx.config import LmConfig
from moshi_mlx.generate import LmGen
from moshi_mlx.sampling import make_sampler

TINY = dict(
    dim=32, text_card=64, n_q=4, dep_q=2, card=32, num_heads=2, num_layers=1, hidden_scale=4.125,
    context=8, gating="silu", norm="rms_norm_f32", positional_embedding="rope",
    depformer_dim=16, depformer_dim_feedforward=48, depformer_num_heads=1, depformer_num_layers=1,
    depformer_multi_linear=True, depformer_weights_per_step=True, depformer_pos_emb="none",
    delays=[0, 0, 1, 0, 1],
)


def run_long(steps: int) -> dict[str, float]:
    from moshi_mlx.models.lm import Lm

    mx.random.seed(0)
    lm = Lm(LmConfig.from_kyutai_json(TINY))
    mx.eval(lm.parameters())
    gen = LmGen(lm, make_sampler(0.8, top_k=20), make_sampler(0.8, top_k=20), seed=0)
    user = mx.array(np.random.default_rng(0).integers(0, TINY["card"], size=(1, 2, 97)).astype(np.int32))
    warmup = 200
    stats: dict[str, float] = {}
    seen = np.zeros(TINY["card"], dtype=bool)
    start = time.perf_counter()
    for t in range(steps):
        out = gen.step(user[:, :, t % 97])
        if out is not None:
            seen[np.array(out)[0, 1:]] = True  # reading the tokens is the per-step sync point
        if t + 1 == warmup:
            mx.clear_cache()
            stats["cache_bytes_start"] = gen.kv_nbytes
            stats["active_start"] = mx.get_active_memory()
    mx.clear_cache()
    stats["cache_bytes_end"] = gen.kv_nbytes
    stats["active_end"] = mx.get_active_memory()
    stats["offset"] = gen.offset
    stats["seconds"] = time.perf_counter() - start
    stats["distinct_codes"] = int(seen.sum())
    return stats


def check(stats: dict[str, float], steps: int) -> None:
    print(
        f"{steps} steps in {stats['seconds']:.1f}s: KV cache {stats['cache_bytes_start']} -> "
        f"{stats['cache_bytes_end']} bytes, active memory {stats['active_start']} -> {stats['active_end']} bytes"
    )
    assert stats["offset"] == steps
    assert stats["cache_bytes_end"] == stats["cache_bytes_start"] > 0
    # No growth beyond allocator noise (one KV cache is ~1 KB here; growth would be ~steps KB).
    assert stats["active_end"] - stats["active_start"] <= 64 * 1024
    assert stats["distinct_codes"] > 5


def test_streaming_2k_steps_memory_flat():
    check(run_long(2_000), 2_000)


@pytest.mark.slow
def test_streaming_20k_steps_memory_flat():
    check(run_long(20_000), 20_000)
