"""Cross-attention to a condition source (torch `StreamingMultiheadAttention(cross_attention=True)`).

Used by conditioned models whose fuser has `cross` conditions (Kyutai TTS's speaker embeddings). In a
layer with cross-attention, the block runs between self-attention and the feed-forward:
`x + ls_cross(cross_attention(norm_cross(x), source))`, `norm_cross` a LayerNorm (eps 1e-5, with
bias, whatever the layer's norm), no positions, no mask. Queries use the first third of the fused
`in_projs.0` rows, keys and values the rest; the source's keys/values are computed once per source.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..config import ConfigError, TransformerConfig


# A cross-attention source `[B, S, D]`, or its keys and values per layer (`CrossAttention.source_kv`),
# computed once outside a compiled graph (the compiled frame takes them as constants).
CrossSource = mx.array | tuple[mx.array, mx.array]


class _SourceKV:
    """The last source and its keys/values (a plain object: not parameters)."""

    def __init__(self) -> None:
        self.source: mx.array | None = None
        self.kv: tuple[mx.array, mx.array] | None = None


class CrossAttention(nn.Module):
    """Multi-head attention from `x` `[B, T, D]` to a source `[B, S, D]` (parameter names as torch's)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        if cfg.kv_repeat != 1:
            raise ConfigError("cross-attention with kv_repeat > 1 is not supported (torch moshi does not support it)")
        d = cfg.d_model
        self.in_projs = [nn.Linear(d, 3 * d, bias=False)]
        self.out_projs = [nn.Linear(d, d, bias=False)]
        self.scale = cfg.head_dim**-0.5
        self._dims = (d, cfg.num_heads, cfg.head_dim)
        self._memo = _SourceKV()

    def source_kv(self, source: mx.array) -> tuple[mx.array, mx.array]:
        """Keys and values `[B, H, S, Dh]` of `source` (reused while the same source array is given)."""
        if self._memo.source is source and self._memo.kv is not None:
            return self._memo.kv
        d, H, Dh = self._dims
        B, S, _ = source.shape
        kv = self.in_projs[0](source)[..., d:].reshape(B, S, 2, H, Dh).transpose(2, 0, 3, 1, 4)
        self._memo.source, self._memo.kv = source, (kv[0], kv[1])
        return kv[0], kv[1]

    def __call__(self, x: mx.array, source: CrossSource) -> mx.array:
        d, H, Dh = self._dims
        B, T, _ = x.shape
        q = self.in_projs[0](x)[..., :d].reshape(B, T, H, Dh).transpose(0, 2, 1, 3)
        if isinstance(source, tuple):
            k, v = source
        else:
            k, v = self.source_kv(source.astype(x.dtype) if source.dtype != x.dtype else source)
        y = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.out_projs[0](y.transpose(0, 2, 1, 3).reshape(B, T, d))


class _Scale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.scale = mx.full((dim,), init)


def add_cross_attention(layer: nn.Module, cfg: TransformerConfig) -> None:
    """Gives `layer` torch's cross-attention parameters: `cross_attention`, `norm_cross`, `layer_scale_cross`."""
    layer.cross_attention = CrossAttention(cfg)
    layer.norm_cross = nn.LayerNorm(cfg.d_model, eps=1e-5)
    if cfg.layer_scale is not None:
        layer.layer_scale_cross = _Scale(cfg.d_model, cfg.layer_scale)


def apply_cross_attention(layer: nn.Module, x: mx.array, source: CrossSource | None) -> mx.array:
    """`x + ls_cross(cross_attention(norm_cross(x), source))` for a layer made by `add_cross_attention`."""
    if source is None:
        raise ValueError("this transformer has cross-attention layers: a cross-attention source is required")
    update = layer.cross_attention(layer.norm_cross(x), source)
    if "layer_scale_cross" in layer:
        update = update * layer.layer_scale_cross.scale
    return x + update
