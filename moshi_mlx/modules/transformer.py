"""Pre-norm transformer layers: RMSNorm|LayerNorm, gated|GELU feed-forward, optional LayerScale."""

from __future__ import annotations

from functools import partial
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from ..config import TransformerConfig
from .attention import Attention, Cache, apply_per_position, apply_rope, rotate
from .cross_attention import CrossSource, add_cross_attention, apply_cross_attention
from .kv_cache import KVCache, RingKVCache


# Applies a Linear-like module to an input, `linear(module, x, residual=None)`; with `residual`,
# returns `residual + module(x)` (a fused matrix product and sum where the applier can).
Linear = Callable[..., mx.array]


def call(module: nn.Module, x: mx.array, residual: mx.array | None = None) -> mx.array:
    """`module(x)` [+ `residual`]: the default way the single-position steps apply their Linear layers."""
    y = module(x)
    return y if residual is None else residual.astype(y.dtype) + y


class StepOps:
    """How the single-position steps (`step_into`, `step_in_frame`) compute: Linear layers through
    `linear`, and with `lean` (the CPU backend, where every graph node costs a dispatch) RMSNorm and
    attention in the fewest nodes, with the same formulas as `mx.fast.rms_norm` and the fast
    attention's own CPU fallback (the attention's scale and mask then fold into one `mx.addmm`).
    GPUs keep the fused kernels (`lean=False`)."""

    def __init__(self, linear: Linear = call, lean: bool = False):
        self.linear = linear
        self.lean = lean

    def norm(self, module: nn.Module, x: mx.array) -> mx.array:
        if not (self.lean and isinstance(module, RMSNorm)):
            return module(x)
        # fast.rms_norm's formula; the square is taken of |x| in fp32, a chain that fuses into one kernel.
        out_type = (mx.array(0, x.dtype) * mx.array(0, module.weight.dtype)).dtype  # never evaluated
        ms = mx.mean(mx.square(mx.abs(x).astype(mx.float32)), axis=-1, keepdims=True)
        y = (x.astype(mx.float32) * mx.rsqrt(ms + module.eps)).astype(out_type)
        return y * module.weight.astype(out_type)

    def attend(self, attn: Attention, q: mx.array, keys: mx.array, values: mx.array, mask: mx.array | None) -> mx.array:
        """One query position, `[B, H, 1, Dh]`; `mask`: None (every key), boolean `[1, S]`, or the
        additive `[B, H, 1, S]` bias of `attention_bias` (what `lean_attention` needs to fold it in)."""
        if mask is None or not self.lean_attention(attn):
            return attn.attend_one(q, keys, values, mask)
        scores = mx.addmm(mask, q, keys.swapaxes(-1, -2), alpha=attn.scale)
        return lean_softmax(scores) @ values

    def lean_attention(self, attn: Attention) -> bool:
        """Whether `attend` takes an additive bias for this attention (lean, one key head per head)."""
        return self.lean and attn._heads == attn._kv_heads


# MLX's CPU softmax of bf16/fp16 rows computes in fp32 already (`precise=True`), but one element at
# a time, with a scalar exp; on fp32 rows it is vectorised. Rows of at least this many keys are
# therefore cast to fp32 and back around it: the same values (no element differed in 3.7 M of
# random masked rows of 8 to 3,000 keys), and 32 temporal layers of 4 heads over 128 keys took
# 0.11 ms instead of 0.54 (over 2,048 keys 0.30 ms instead of 7.4). Below it the two casts cost
# more than they save (measured break-even: 16 keys).
FP32_SOFTMAX_MIN_KEYS = 16


def lean_softmax(scores: mx.array) -> mx.array:
    """`mx.softmax(scores, axis=-1, precise=True)`, in fp32 on long rows of another dtype
    (`FP32_SOFTMAX_MIN_KEYS`)."""
    if scores.dtype == mx.float32 or scores.shape[-1] < FP32_SOFTMAX_MIN_KEYS:
        return mx.softmax(scores, axis=-1, precise=True)
    return mx.softmax(scores.astype(mx.float32), axis=-1, precise=True).astype(scores.dtype)


def attention_bias(mask: mx.array | None, shape: tuple[int, ...], dtype: mx.Dtype) -> mx.array:
    """The additive `shape` (`[B, H, 1, S]`) bias of a boolean `[1, S]` mask: 0 where allowed, -inf elsewhere."""
    if mask is None:
        return mx.zeros(shape, dtype=dtype)
    return mx.broadcast_to(mx.where(mask, mx.array(0, dtype), mx.array(-mx.inf, dtype)), shape)


class RMSNorm(nn.Module):
    """`x * weight / sqrt(mean(x^2) + eps)` (torch "rms_norm", or "rms_norm_f32" with eps 1e-8).

    `mx.fast.rms_norm` accumulates in fp32 whatever the input dtype, which is what "_f32" asks
    for; only the final rounding of bf16 outputs may differ from torch by one ulp.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = mx.ones((dim,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, self.weight, self.eps)


class LayerNorm(nn.LayerNorm):
    """LayerNorm with bias; `float32=True` computes in fp32 (torch "layer_norm_f32")."""

    def __init__(self, dim: int, eps: float, float32: bool):
        super().__init__(dim, eps=eps)
        self.float32 = float32

    def __call__(self, x: mx.array) -> mx.array:
        if self.float32:
            y = mx.fast.layer_norm(
                x.astype(mx.float32), self.weight.astype(mx.float32), self.bias.astype(mx.float32), self.eps
            )
            return y.astype(x.dtype)
        return super().__call__(x)


def make_norm(kind: str, dim: int) -> nn.Module:
    eps = 1e-8 if kind.endswith("_f32") else 1e-5
    float32 = kind.endswith("_f32")
    if kind.startswith("rms_norm"):
        return RMSNorm(dim, eps)
    return LayerNorm(dim, eps, float32)


_ACTIVATIONS = {
    "silu": nn.silu,
    "gelu": nn.gelu,  # exact (erf) GELU, as torch F.gelu
    "relu": nn.relu,
    "sigmoid": mx.sigmoid,
    "tanh": mx.tanh,
    "elu": nn.elu,
    "leaky_relu": nn.leaky_relu,
    "mish": nn.mish,
    "softsign": nn.softsign,
}


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.scale = mx.full((dim,), init)

    def __call__(self, x: mx.array) -> mx.array:
        return x * self.scale


class ActivationGating(nn.Module):
    """Gated feed-forward: `linear_out(act(a) * b)` with `[a, b] = linear_in(x)`."""

    def __init__(self, dim: int, hidden: int, activation: str):
        super().__init__()
        self.linear_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.linear_out = nn.Linear(hidden, dim, bias=False)
        self.activation = activation

    def __call__(self, x: mx.array) -> mx.array:
        gate, value = mx.split(self.linear_in(x), 2, axis=-1)
        return self.linear_out(_ACTIVATIONS[self.activation](gate) * value)


class _CompiledSteps:
    """Compiled single-step functions of one layer, by (weight set, dtype); a plain object so that
    `nn.Module` does not take it for parameters."""

    def __init__(self) -> None:
        self.fns: dict = {}


class TransformerLayer(nn.Module):
    """`x + ls1(attn(norm1(x)))`, then `x + ls2(ffn(norm2(x)))`; parameter names follow torch moshi."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.self_attn = Attention(cfg)
        self.norm1 = make_norm(cfg.norm, d)
        self.norm2 = make_norm(cfg.norm, d)
        if cfg.gating == "none":
            self.linear1 = nn.Linear(d, cfg.ffn_hidden(), bias=False)
            self.linear2 = nn.Linear(cfg.ffn_hidden(), d, bias=False)
        elif cfg.weights_per_step:
            self.gating = [ActivationGating(d, cfg.ffn_hidden(i), cfg.gating) for i in range(cfg.num_weight_sets)]
        else:
            self.gating = ActivationGating(d, cfg.ffn_hidden(), cfg.gating)
        if cfg.layer_scale is not None:
            self.layer_scale_1 = LayerScale(d, cfg.layer_scale)
            self.layer_scale_2 = LayerScale(d, cfg.layer_scale)
        if cfg.cross_attention:  # conditioned models: see modules/cross_attention.py
            add_cross_attention(self, cfg)
        self._compiled = _CompiledSteps()

    def _ffn(self, x: mx.array, offset: int) -> mx.array:
        cfg = self.cfg
        if cfg.gating == "none":
            return self.linear2(nn.gelu(self.linear1(x)))
        if not cfg.weights_per_step:
            return self.gating(x)
        return apply_per_position(self.gating, x, offset, cfg)

    def _residuals(self, x: mx.array, attn_update: mx.array, offset: int, cross: mx.array | None = None) -> mx.array:
        """`x + ls1(attn_update)`, [cross-attention to `cross`,] then `+ ls2(ffn(norm2(.)))` with the weight
        set(s) of `offset`."""
        if self.cfg.layer_scale is not None:
            attn_update = self.layer_scale_1(attn_update)
        x = x.astype(attn_update.dtype) + attn_update
        if self.cfg.cross_attention:
            x = apply_cross_attention(self, x, cross)
        update = self._ffn(self.norm2(x), offset)
        if self.cfg.layer_scale is not None:
            update = self.layer_scale_2(update)
        return x.astype(update.dtype) + update

    def _pre(self, w: int, x: mx.array, offset: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        return self.self_attn.project(self.norm1(x), offset, w)

    def _post(self, w: int, offset: int, x: mx.array, y: mx.array) -> mx.array:
        return self._residuals(x, self.self_attn.out_projs[w](y), offset)

    def _single_step(self, x: mx.array, cache: Cache) -> mx.array:
        """One position with a cache: the work before and after the cache update runs as two
        compiled functions (one graph each, built once per weight set), the update in between."""
        offset = cache.offset
        w = self.cfg.step_weight_index(offset)
        key = (w, x.dtype)
        fns = self._compiled.fns.get(key)
        if fns is None:
            # `offset` only selects the weight set inside `_post`, the same for every offset of `w`.
            fns = (
                mx.compile(partial(self._pre, w), inputs=self.state),
                mx.compile(partial(self._post, w, offset), inputs=self.state),
            )
            self._compiled.fns[key] = fns
        pre, post = fns
        q, k, v = pre(x, mx.array(offset, dtype=mx.int32))
        k, v, mask = cache.update_and_fetch(k, v)
        return post(x, self.self_attn.attend(q, k, v, mask))

    # One position as `[B, D]` (the compiled frame): the fewest graph nodes, Linear layers applied
    # through `linear(module, x)` (e.g. with pre-transposed weights).

    def _project_one(
        self, x: mx.array, pos: int | mx.array, w: int, ops: StepOps, rotations: mx.array | None = None,
        apart: bool = False,
    ) -> tuple[mx.array, ...]:
        """q `[B, H, 1, Dh]` and keys|values `[B, 2 Hkv, 1, Dh]` of `x` `[B, D]` at position `pos`,
        or with `apart` q, keys and values `[B, Hkv, 1, Dh]`; RoPE by `rotations`
        (`attention.rope_rotations` of `pos`) when given, else `mx.fast.rope`. The pieces are views
        of the projection, except the keys after `mx.fast.rope` (joined to the values unless `apart`)."""
        attn = self.self_attn
        H, Hk = attn._heads, attn._kv_heads
        qkv = self._qkv_one(x, w, ops)
        if rotations is not None:
            qkv = rotate(qkv, rotations)
        if not attn._rope or rotations is not None:
            return tuple(mx.split(qkv, [H, H + Hk] if apart else [H], axis=1))
        q, k, v = mx.split(qkv, [H, H + Hk], axis=1)
        q, k = apply_rope(q, pos, self.cfg.max_period), apply_rope(k, pos, self.cfg.max_period)
        return (q, k, v) if apart else (q, mx.concatenate([k, v], axis=1))

    def _qkv_one(self, x: mx.array, w: int, ops: StepOps) -> mx.array:
        """q|k|v `[B, H + 2 Hkv, 1, Dh]` of `x` `[B, D]` with weight set `w`, before RoPE."""
        attn = self.self_attn
        shape = (x.shape[0], attn._heads + 2 * attn._kv_heads, 1, attn._head_dim)
        return ops.linear(attn.in_projs[w], ops.norm(self.norm1, x)).reshape(shape)

    def _finish_one(self, x: mx.array, y: mx.array, w: int, ops: StepOps, cross: CrossSource | None = None) -> mx.array:
        """`x` `[B, D]` plus the attention output `y` `[B, H, 1, Dh]`, then the feed-forward block."""
        cfg, linear = self.cfg, ops.linear
        scaled = cfg.layer_scale is not None
        y = y.reshape(x.shape[0], -1)
        if scaled:
            update = self.layer_scale_1(linear(self.self_attn.out_projs[w], y))
            x = x.astype(update.dtype) + update
        else:
            x = linear(self.self_attn.out_projs[w], y, x)
        if cfg.cross_attention:
            x = apply_cross_attention(self, x[:, None], cross)[:, 0]
        h = ops.norm(self.norm2, x)
        if cfg.gating == "none":
            out, h = self.linear2, nn.gelu(linear(self.linear1, h))
        else:
            gating = self.gating[w] if cfg.weights_per_step else self.gating
            gate, value = mx.split(linear(gating.linear_in, h), 2, axis=-1)
            out, h = gating.linear_out, _ACTIVATIONS[gating.activation](gate) * value
        if scaled:
            update = self.layer_scale_2(linear(out, h))
            return x.astype(update.dtype) + update
        return linear(out, h, x)

    def step_into(
        self, x: mx.array, buffers: list[mx.array], pos: mx.array, slot: mx.array,
        mask: mx.array | None, ops: StepOps, cross: CrossSource | None = None,
        rotations: mx.array | None = None,
    ) -> tuple[mx.array, list[mx.array]]:
        """One position `pos` (array) of `x` `[B, D]` whose key/value go to slot `slot` (array) of the
        fixed-shape `buffers`: keys and values `[B, Hkv, S, Dh]`, or one keys|values buffer
        `[B, 2 Hkv, S, Dh]` (one slice update instead of two; the CPU frame); attends to the slots
        `mask` allows (see `StepOps.attend`); `rotations`: RoPE of `pos` as matrices (see
        `_project_one`). Returns (output, updated buffers); a pure function of its inputs."""
        Hk = self.self_attn._kv_heads
        if len(buffers) == 1:
            q, kv = self._project_one(x, pos, 0, ops, rotations)
            buffers = [mx.slice_update(buffers[0], kv.astype(buffers[0].dtype), slot, axes=(2,))]
            keys, values = buffers[0][:, :Hk], buffers[0][:, Hk:]
        else:  # keys and values written apart: no joined copy of them
            q, k, v = self._project_one(x, pos, 0, ops, rotations, apart=True)
            keys = mx.slice_update(buffers[0], k.astype(buffers[0].dtype), slot, axes=(2,))
            values = mx.slice_update(buffers[1], v.astype(buffers[1].dtype), slot, axes=(2,))
            buffers = [keys, values]
        y = ops.attend(self.self_attn, q, keys, values, mask)
        return self._finish_one(x, y, 0, ops, cross), buffers

    def step_in_frame(
        self, x: mx.array, kv: list[mx.array], index: int, ops: StepOps, bias: mx.array | None = None
    ) -> mx.array:
        """Position `index` (`x` `[B, D]`) of a short stream that lives within one frame (the
        depformer's codebooks), with the weight set of `index`: appends its keys|values
        `[B, 2 Hkv, 1, Dh]` to `kv` (the earlier positions' `[B, 2 Hkv, n, Dh]`, in pieces along n)
        and attends to the last `context` of them (`frame_window`); `bias`: the zero attention bias
        of that window when `ops.lean_attention`. The pieces it concatenates are left as one.
        Keys and values travel together: one concatenation a position, not two."""
        attn, w = self.self_attn, self.cfg.step_weight_index(index)
        H, Hk = attn._heads, attn._kv_heads
        q, new = self._project_one(x, index, w, ops)
        kv.append(new)
        window = self.frame_window(index)
        if window == 1 and H == Hk:  # softmax over one key is exactly 1: the output is v
            return self._finish_one(x, new[:, Hk:], w, ops)
        joined = kv[0] if len(kv) == 1 else mx.concatenate(kv, axis=2)
        kv[:] = [joined if joined.shape[2] <= window else joined[:, :, -window:]]
        y = ops.attend(attn, q, kv[0][:, :Hk], kv[0][:, Hk:], bias)
        return self._finish_one(x, y, w, ops)

    def frame_window(self, index: int) -> int:
        """Keys position `index` of an in-frame stream attends to (itself and up to `context - 1` before)."""
        return index + 1 if self.cfg.context is None else min(index + 1, self.cfg.context)

    def __call__(self, x: mx.array, cache: Cache | None = None, cross: mx.array | None = None) -> mx.array:
        if cache is not None and x.shape[1] == 1 and not self.cfg.cross_attention:
            return self._single_step(x, cache)
        offset = 0 if cache is None else cache.offset
        return self._residuals(x, self.self_attn(self.norm1(x), cache), offset, cross)


def sin_embedding(offset: int | mx.array, T: int, dim: int, max_period: float, dtype: mx.Dtype) -> mx.array:
    """Sinusoidal positional embedding `[1, T, dim]` of positions `offset..offset+T-1` (torch
    `create_sin_embedding`); `offset` may be an array (the compiled frame)."""
    half = dim // 2
    # torch computes this in the activations' dtype; so do we.
    positions = (offset + mx.arange(T)).astype(dtype)[:, None]
    adim = mx.arange(half).astype(dtype)[None, :]
    phase = positions / (mx.array(max_period, dtype=dtype) ** (adim / (half - 1)))
    return mx.concatenate([mx.cos(phase), mx.sin(phase)], axis=-1)[None]


class Transformer(nn.Module):
    """A stack of `TransformerLayer`s; `cache` is the list returned by `make_cache()`."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = [TransformerLayer(cfg) for _ in range(cfg.num_layers)]

    def make_cache(self, ring: bool | None = None) -> list[Cache]:
        """One cache per layer: a ring of `context` positions when a context is set, else growing."""
        cfg = self.cfg
        if ring is None:
            ring = cfg.context is not None
        if ring:
            if cfg.context is None:
                raise ValueError("a ring cache needs a context")
            return [RingKVCache(cfg.context, cfg.causal, cfg.context) for _ in self.layers]
        return [KVCache(cfg.causal, cfg.context) for _ in self.layers]

    def __call__(self, x: mx.array, cache: list[Cache] | None = None, cross: mx.array | None = None) -> mx.array:
        """`cross`: the cross-attention source `[B, S, D]`, for a config with `cross_attention`."""
        if self.cfg.positional_embedding == "sin":
            offset = 0 if cache is None else cache[0].offset
            x = x + sin_embedding(offset, x.shape[1], x.shape[-1], self.cfg.max_period, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, None if cache is None else cache[i], cross)
        return x

