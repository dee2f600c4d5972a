"""SEANet encoder/decoder of Mimi (causal, ELU, true-skip residual blocks), (B, T, C) layout."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..config import SeanetConfig
from .conv import StreamingConv1d, StreamingConvTranspose1d


def elu(x: mx.array) -> mx.array:
    """ELU with alpha 1, using expm1 like torch."""
    return mx.where(x > 0, x, mx.expm1(mx.minimum(x, 0)))


def _apply(layer: nn.Module, x: mx.array, streaming: bool) -> mx.array:
    return layer.step(x) if streaming else layer(x)


class _StreamingContainer(nn.Module):
    """`__call__` (batch) and `step` (stream) run the subclass's `_run(x, streaming)`;
    `reset` resets every streaming descendant."""

    def __call__(self, x: mx.array) -> mx.array:
        return self._run(x, False)

    def step(self, x: mx.array) -> mx.array:
        return self._run(x, True)

    def reset(self) -> None:
        for _, module in self.named_modules():
            if isinstance(module, (StreamingConv1d, StreamingConvTranspose1d)):
                module.reset()


class SeanetResnetBlock(_StreamingContainer):
    """`x + conv_1(elu(conv_0(elu(x))))` with a dilated k-tap conv to dim/compress, then a 1x1 conv back."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, compress: int, pad_mode: str):
        super().__init__()
        hidden = dim // compress
        self.convs = [
            StreamingConv1d(dim, hidden, kernel_size, dilation=dilation, pad_mode=pad_mode),
            StreamingConv1d(hidden, dim, 1, pad_mode=pad_mode),
        ]

    def _run(self, x: mx.array, streaming: bool) -> mx.array:
        y = x
        for conv in self.convs:
            y = _apply(conv, elu(y), streaming)
        return x + y


class EncoderStage(_StreamingContainer):
    """Residual blocks, then ELU and a strided conv doubling the channels."""

    def __init__(self, cfg: SeanetConfig, dim: int, ratio: int):
        super().__init__()
        self.residuals = [
            SeanetResnetBlock(dim, cfg.residual_kernel_size, cfg.dilation_base**j, cfg.compress, cfg.pad_mode)
            for j in range(cfg.n_residual_layers)
        ]
        self.downsample = StreamingConv1d(dim, 2 * dim, 2 * ratio, stride=ratio, pad_mode=cfg.pad_mode)

    def _run(self, x: mx.array, streaming: bool) -> mx.array:
        for block in self.residuals:
            x = _apply(block, x, streaming)
        return _apply(self.downsample, elu(x), streaming)


class DecoderStage(_StreamingContainer):
    """ELU and a transposed conv halving the channels, then residual blocks."""

    def __init__(self, cfg: SeanetConfig, dim: int, ratio: int):
        super().__init__()
        self.upsample = StreamingConvTranspose1d(dim, dim // 2, 2 * ratio, stride=ratio)
        self.residuals = [
            SeanetResnetBlock(dim // 2, cfg.residual_kernel_size, cfg.dilation_base**j, cfg.compress, cfg.pad_mode)
            for j in range(cfg.n_residual_layers)
        ]

    def _run(self, x: mx.array, streaming: bool) -> mx.array:
        x = _apply(self.upsample, elu(x), streaming)
        for block in self.residuals:
            x = _apply(block, x, streaming)
        return x


class SeanetEncoder(_StreamingContainer):
    """Waveform `[B, T, channels]` -> latent `[B, T / hop_length, dimension]`."""

    def __init__(self, cfg: SeanetConfig):
        super().__init__()
        nf = cfg.n_filters
        self.init_conv = StreamingConv1d(cfg.channels, nf, cfg.kernel_size, pad_mode=cfg.pad_mode)
        ratios = list(reversed(cfg.ratios))
        self.stages = [EncoderStage(cfg, nf * 2**i, r) for i, r in enumerate(ratios)]
        self.final_conv = StreamingConv1d(
            nf * 2 ** len(ratios), cfg.dimension, cfg.last_kernel_size, pad_mode=cfg.pad_mode
        )

    def _run(self, x: mx.array, streaming: bool) -> mx.array:
        x = _apply(self.init_conv, x, streaming)
        for stage in self.stages:
            x = _apply(stage, x, streaming)
        return _apply(self.final_conv, elu(x), streaming)


class SeanetDecoder(_StreamingContainer):
    """Latent `[B, T, dimension]` -> waveform `[B, T * hop_length, channels]`."""

    def __init__(self, cfg: SeanetConfig):
        super().__init__()
        nf = cfg.n_filters
        mult = 2 ** len(cfg.ratios)
        self.init_conv = StreamingConv1d(cfg.dimension, mult * nf, cfg.kernel_size, pad_mode=cfg.pad_mode)
        self.stages = [DecoderStage(cfg, nf * mult // 2**i, r) for i, r in enumerate(cfg.ratios)]
        self.final_conv = StreamingConv1d(nf, cfg.channels, cfg.last_kernel_size, pad_mode=cfg.pad_mode)

    def _run(self, x: mx.array, streaming: bool) -> mx.array:
        x = _apply(self.init_conv, x, streaming)
        for stage in self.stages:
            x = _apply(stage, x, streaming)
        return _apply(self.final_conv, elu(x), streaming)
