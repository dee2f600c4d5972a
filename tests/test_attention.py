"""Attention masks and KV caches: prefill equals steps, windows hold after the ring wraps."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from moshi_mlx.config import TransformerConfig
from moshi_mlx.modules import attention
from moshi_mlx.modules.attention import apply_rope, rope_product_is_exact, rope_rotations, rotate
from moshi_mlx.modules.kv_cache import KVCache, RingKVCache, attention_mask
from moshi_mlx.modules.transformer import Transformer


def reference_attention(q, k, v, context):
    """Plain numpy causal attention where a query sees `context` keys including itself."""
    T = q.shape[2]
    scores = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
    pos = np.arange(T)
    allowed = (pos[:, None] - pos[None, :] >= 0)
    if context is not None:
        allowed &= pos[:, None] - pos[None, :] < context
    scores = np.where(allowed, scores, -np.inf)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bhqk,bhkd->bhqd", w, v)


def run_chunks(cache, q, k, v, chunks):
    outs, t = [], 0
    for n in chunks:
        keys, values, mask = cache.update_and_fetch(k[:, :, t : t + n], v[:, :, t : t + n])
        outs.append(mx.fast.scaled_dot_product_attention(q[:, :, t : t + n], keys, values, scale=q.shape[-1] ** -0.5, mask=mask))
        t += n
    return np.array(mx.concatenate(outs, axis=2))


@pytest.mark.parametrize("context", [None, 5])
@pytest.mark.parametrize("chunks", [[1] * 23, [7, 1, 1, 9, 5], [23], [3, 3, 3, 3, 3, 3, 5]])
def test_caches_match_exact_windowed_attention(context, chunks):
    mx.random.seed(0)
    q, k, v = (mx.random.normal((2, 3, 23, 8)) for _ in range(3))
    ref = reference_attention(*(np.array(a) for a in (q, k, v)), context)
    cache = KVCache(context=context, step=4) if context is None else RingKVCache(context)
    got = run_chunks(cache, q, k, v, chunks)
    assert np.abs(got - ref).max() < 1e-5
    assert cache.offset == 23


def test_ring_keeps_capacity_bytes():
    ring = RingKVCache(6, step=4)
    k = mx.zeros((1, 2, 1, 4))
    sizes = []
    for _ in range(50):
        ring.update_and_fetch(k, k)
        sizes.append(ring.nbytes)
    assert max(sizes) == sizes[-1] == 2 * 6 * 2 * 4 * 4


@pytest.mark.parametrize("make", [lambda: RingKVCache(1000, step=256), lambda: KVCache(step=256)])
def test_cache_growth_frees_the_old_buffers_outside_the_buffer_cache(make):
    """Step-by-step caches grow 256 slots at a time; each growth frees the old buffers at once,
    none left in MLX's buffer cache (there, a long text generation on a GPU, whose cache limit is
    large, would keep every size the buffers ever had); contents and the caller's limit kept."""
    cache = make()
    rows = mx.random.normal((300, 1, 2, 1, 64), key=mx.random.key(3))
    limit = mx.set_cache_limit(1 << 30)  # a cache that would hold every old buffer
    try:
        for t in range(256):
            cache.update_and_fetch(rows[t], -rows[t])
        mx.eval(cache.keys, cache.values)
        mx.clear_cache()
        keys, values, _ = cache.update_and_fetch(rows[256], -rows[256])  # 256 -> 512 slots
        mx.eval(keys, values)
        cached = mx.get_cache_memory()
    finally:
        assert mx.set_cache_limit(limit) == 1 << 30
    assert cache.keys.shape[2] == 512 and cached < 128 << 10  # each old buffer was 128 KiB
    want = np.array(rows[:257, :, :, 0]).transpose(1, 2, 0, 3)
    assert np.array_equal(np.array(keys), want) and np.array_equal(np.array(values), -want)


def test_mask_semantics():
    m = np.array(attention_mask(10, 3, 6, 7, causal=True, context=4))
    # query 10 sees 7..10, query 12 sees 9..12
    assert m[0].tolist() == [False, True, True, True, True, False, False]
    assert m[2].tolist() == [False, False, False, True, True, True, True]
    assert attention_mask(5, 1, 0, 6, causal=True, context=None) is None
    assert attention_mask(0, 4, 0, 4, causal=False, context=2) is None


@pytest.mark.parametrize("norm, gating, pos", [("rms_norm_f32", "silu", "rope"), ("layer_norm", "none", "sin")])
def test_transformer_prefill_equals_steps_after_wrap(norm, gating, pos):
    cfg = TransformerConfig(32, 4, 2, 128, context=6, norm=norm, gating=gating, positional_embedding=pos, layer_scale=0.5)
    model = Transformer(cfg)
    x = mx.random.normal((2, 30, 32), key=mx.random.key(1))
    batch = model(x)
    cache = model.make_cache()
    steps = mx.concatenate([model(x[:, t : t + 1], cache) for t in range(30)], axis=1)
    assert mx.abs(batch - steps).max().item() < 1e-5
    cache = model.make_cache()
    mixed = mx.concatenate([model(x[:, a:b], cache) for a, b in [(0, 8), (8, 9), (9, 20), (20, 30)]], axis=1)
    assert mx.abs(batch - mixed).max().item() < 1e-5


def test_weights_per_step_select_by_position():
    cfg = TransformerConfig(16, 2, 1, 48, gating="silu", norm="rms_norm_f32", positional_embedding="none",
                            weights_per_step=4, weights_per_step_schedule=[0, 1, 1, 0])
    model = Transformer(cfg)
    assert len(model.layers[0].self_attn.in_projs) == 2 and len(model.layers[0].gating) == 2
    x = mx.random.normal((3, 4, 16), key=mx.random.key(2))
    batch = model(x)
    cache = model.make_cache()
    steps = mx.concatenate([model(x[:, t : t + 1], cache) for t in range(4)], axis=1)
    assert mx.abs(batch - steps).max().item() < 1e-5


@pytest.mark.parametrize("dims", [16, 128])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_rope_rotations_equal_fast_rope(dims, dtype):
    """The CPU frame's RoPE (one batched product by `rope_rotations`) gives `mx.fast.rope`'s fp32
    values bit for bit on the query and key heads where `rope_product_is_exact` says so (MLX's
    bundled BLAS; with a BLAS that fuses multiply-adds, e.g. OpenBLAS, within an ulp, and the frame
    then uses fast.rope), rounded once to the input's dtype (torch moshi's rule), and leaves the
    value heads as they are. Compiled (the frame builds them inside its graph), they are the same
    bit for bit."""
    H, Hk = 3, 2
    x = mx.random.normal((2, H + 2 * Hk, 1, dims)).astype(dtype)
    x32 = x.astype(mx.float32)
    built = mx.compile(lambda p: rope_rotations(p, dims, 10000.0, H, Hk))
    exact_here = rope_product_is_exact(dims, 10000.0, H, Hk)
    for p in (0, 1, 37, 2999, 12345):
        rotations = rope_rotations(mx.array(p, dtype=mx.int32), dims, 10000.0, H, Hk)
        assert mx.array_equal(rope_rotations(p, dims, 10000.0, H, Hk), rotations).item()
        exact = rotate(x32, rotations)
        want = apply_rope(x32[:, : H + Hk], p, 10000.0)
        if exact_here:
            assert mx.array_equal(exact[:, : H + Hk], want).item(), p
        else:
            assert mx.allclose(exact[:, : H + Hk], want, rtol=0, atol=2**-20).item(), p  # |x| < 8: an ulp of x
        assert mx.array_equal(exact[:, H + Hk :], x32[:, H + Hk :]).item()
        got = rotate(x, rotations)
        assert got.dtype == dtype and mx.array_equal(got, exact.astype(dtype)).item(), p
        assert mx.array_equal(built(mx.array(p, dtype=mx.int32)), rotations).item(), p


@pytest.mark.parametrize("dims", [16, 128])
def test_compiled_rope_equals_op_by_op_at_long_positions(dims):
    """RoPE inside a compiled graph (the frame, `Lm.step`'s compiled layer parts) gives the op-by-op
    values bit for bit, far into a conversation. The floor of MLX (0.32.3) is set by this: before,
    the CPU's fused kernels computed `exp`, hence the rotation angles, differently (7e-4 apart at
    position 2999 on these inputs)."""
    x = mx.random.normal((1, 6, 1, dims), key=mx.random.key(0))
    rope = lambda x, p: apply_rope(x, p, 10000.0)  # noqa: E731
    compiled = mx.compile(rope)
    for p in (1, 77, 2999, 30000):
        position = mx.array(p, dtype=mx.int32)
        assert mx.array_equal(compiled(x, position), rope(x, position)).item(), p
        assert mx.array_equal(rope(x, position), rope(x, p)).item(), p


def test_rope_product_check_rejects_a_product_off_by_an_ulp(monkeypatch):
    """`rope_product_is_exact` compares the product with `mx.fast.rope` bit for bit: a product one
    ulp off (as a fused multiply-add rounds) fails it, the same product passes it again."""
    exact = rotate

    def off_by_an_ulp(x, rotation):
        y = exact(x, rotation)
        return mx.where(mx.arange(y.shape[-1]) == 1, y * (1 + 2**-23), y)  # heads' element 1

    args = (16, 10000.0, 3, 2)
    clear = attention._rope_product_check.cache_clear
    clear()
    try:
        expected = rope_product_is_exact(*args)
        clear()
        monkeypatch.setattr(attention, "rotate", off_by_an_ulp)
        assert not rope_product_is_exact(*args)
        clear()
        monkeypatch.setattr(attention, "rotate", exact)
        assert rope_product_is_exact(*args) == expected
    finally:
        clear()
