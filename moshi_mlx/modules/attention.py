"""Multi-head self-attention with interleaved RoPE, causal/context masking and per-step weights."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Sequence

import mlx.core as mx
import mlx.nn as nn

from ..config import TransformerConfig
from .kv_cache import KVCache, RingKVCache, attention_mask

Cache = KVCache | RingKVCache


def apply_rope(x: mx.array, offset: int, max_period: float) -> mx.array:
    """Rotates interleaved pairs (x[2i], x[2i+1]) of `x` [B, H, T, D] by angle
    `(offset + t) * max_period^(-2i/D)` (torch moshi "rope", `interleave=True`)."""
    return mx.fast.rope(x, x.shape[-1], traditional=True, base=max_period, scale=1.0, offset=offset)


def rope_rotations(position: int | mx.array, dims: int, max_period: float, heads: int, kv_heads: int) -> mx.array:
    """`[1, H + 2 Hkv, dims, dims]` fp32: for each query and key head the matrix R with `x @ R` =
    `apply_rope` of `x` at `position` (block-diagonal 2x2 rotations), the identity for each value
    head; so one batched product rotates a `[B, H + 2 Hkv, 1, dims]` q|k|v. On the CPU backend this
    replaces the many nodes `mx.fast.rope` becomes; built once per frame and shared by every layer,
    from constants (no graph nodes) and one fused elementwise kernel."""
    pair, eye, swap, rotated = _rope_patterns(dims, heads, kv_heads)
    angle = mx.array(position).astype(mx.float32) * mx.exp(pair * (-math.log(max_period) / (dims // 2)))
    rotation = eye * mx.cos(angle) + swap * mx.sin(angle)
    return rotated * rotation + (1.0 - rotated) * eye


@lru_cache(maxsize=8)
def _rope_patterns(dims: int, heads: int, kv_heads: int) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """The constants of `rope_rotations`, built once per shape: each column's angle index, the
    identity, the sine pattern and which of the `H + 2 Hkv` heads are rotated."""
    pair = mx.array([j // 2 for j in range(dims)], dtype=mx.float32)
    eye = mx.array([[float(i == j) for j in range(dims)] for i in range(dims)])
    # Row j ^ 1 of column j: -sin under an even column (x[2i+1] feeds out[2i] with -sin), +sin under an odd one.
    swap = mx.array([[(1.0 if j % 2 else -1.0) if i == j ^ 1 else 0.0 for j in range(dims)] for i in range(dims)])
    rotated = mx.array([[[[1.0]]] * (heads + kv_heads) + [[[0.0]]] * kv_heads])  # [1, H + 2 Hkv, 1, 1]
    return pair, eye, swap, rotated


def rope_product_is_exact(dims: int, max_period: float, heads: int, kv_heads: int) -> bool:
    """Whether, on the default device, `rotate` by `rope_rotations` gives `apply_rope`'s fp32 values
    bit for bit and leaves the value heads as they are: checked on random heads at a few positions,
    once per shape and device. A product that fuses each multiply-add (e.g. OpenBLAS's fp32
    kernels) rounds a rotated pair once where `apply_rope` rounds twice."""
    return _rope_product_check(dims, max_period, heads, kv_heads, str(mx.default_device()))


@lru_cache(maxsize=16)
def _rope_product_check(dims: int, max_period: float, heads: int, kv_heads: int, device: str) -> bool:
    """`rope_product_is_exact` on `device` (named, the cache's key)."""
    H, Hk = heads, kv_heads
    x = mx.random.normal((2, H + 2 * Hk, 1, dims), key=mx.random.key(0))
    for position in (1, 3, 1000, 12345):
        out = rotate(x, rope_rotations(position, dims, max_period, H, Hk))
        same = mx.array_equal(out[:, : H + Hk], apply_rope(x[:, : H + Hk], position, max_period))
        if not (same.item() and mx.array_equal(out[:, H + Hk :], x[:, H + Hk :]).item()):
            return False
    return True


def rotate(x: mx.array, rotation: mx.array) -> mx.array:
    """`x` `[..., dims]` times `rope_rotations`, computed in fp32 and returned in `x`'s dtype."""
    return (x.astype(mx.float32) @ rotation).astype(x.dtype)


def apply_per_position(
    fns: Sequence[Callable[[mx.array], mx.array]], x: mx.array, offset: int, cfg: TransformerConfig
) -> mx.array:
    """Applies to each position `offset + t` of `x` `[B, T, D]` the weight set
    `cfg.step_weight_index(offset + t)` picks (torch `apply_weights_per_step`); one set: all at once."""
    if not cfg.weights_per_step:
        return fns[0](x)
    T = x.shape[1]
    outs = [fns[cfg.step_weight_index(offset + t)](x[:, t : t + 1]) for t in range(T)]
    return outs[0] if T == 1 else mx.concatenate(outs, axis=1)


class Attention(nn.Module):
    """Self-attention; `in_projs`/`out_projs` hold one Linear per weight set (torch naming)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        n = cfg.num_weight_sets
        self.in_projs = [nn.Linear(d, d + 2 * kv_dim, bias=False) for _ in range(n)]
        self.out_projs = [nn.Linear(d, d, bias=False) for _ in range(n)]
        self.scale = cfg.head_dim**-0.5
        # Plain ints/bools read on every call (the hot path builds thousands of ops per frame).
        self._heads, self._kv_heads, self._head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self._rope = cfg.positional_embedding == "rope"

    def _split(self, qkv: mx.array, offset: int | mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """Projected `[B, T, D + 2 Dkv]` -> q, k, v `[B, H, T, Dh]`, RoPE applied."""
        B, T, _ = qkv.shape
        H, Hk, Dh = self._heads, self._kv_heads, self._head_dim
        if T == 1:  # one position: [B, 1, H * Dh] is already [B, H, 1, Dh] in memory (fewest graph nodes)
            q, k, v = mx.split(qkv, [H * Dh, (H + Hk) * Dh], axis=-1)
            q, k, v = q.reshape(B, H, 1, Dh), k.reshape(B, Hk, 1, Dh), v.reshape(B, Hk, 1, Dh)
        elif H == Hk:
            q, k, v = qkv.reshape(B, T, 3, H, Dh).transpose(2, 0, 3, 1, 4)
        else:
            q = qkv[..., : H * Dh].reshape(B, T, H, Dh).transpose(0, 2, 1, 3)
            k, v = qkv[..., H * Dh :].reshape(B, T, 2, Hk, Dh).transpose(2, 0, 3, 1, 4)
        if self._rope:
            q = apply_rope(q, offset, self.cfg.max_period)
            k = apply_rope(k, offset, self.cfg.max_period)
        return q, k, v

    def project(self, x: mx.array, offset: int | mx.array, weight_set: int) -> tuple[mx.array, mx.array, mx.array]:
        """q, k, v of a single position with the given weight set."""
        return self._split(self.in_projs[weight_set](x), offset)

    def attend(self, q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None) -> mx.array:
        """Attention output before the output projection, `[B, T, D]`."""
        B, _, T, _ = q.shape
        y = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return y.transpose(0, 2, 1, 3).reshape(B, T, -1)

    def attend_one(self, q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None) -> mx.array:
        """Attention output of one query position, `[B, H, 1, Dh]` (reshapes to `[B, D]` for free)."""
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)

    def __call__(self, x: mx.array, cache: Cache | None = None) -> mx.array:
        cfg = self.cfg
        T = x.shape[1]
        offset = 0 if cache is None else cache.offset
        q, k, v = self._split(apply_per_position(self.in_projs, x, offset, cfg), offset)
        if cache is None:
            mask = attention_mask(0, T, 0, T, cfg.causal, cfg.context)
        else:
            k, v, mask = cache.update_and_fetch(k, v)
        return apply_per_position(self.out_projs, self.attend(q, k, v, mask), offset, cfg)
