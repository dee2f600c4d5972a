"""Streamable causal Conv1d and ConvTranspose1d in MLX's (B, T, C) layout.

Semantics follow torch moshi's `StreamingConv1d` / `StreamingConvTranspose1d`:
- Conv1d pads `(k - 1) * dilation + 1 - stride` samples on the left (zeros, or copies of the
  first sample for "replicate"), never on the right; a streaming step prepends the carried
  inputs instead. Input lengths must be multiples of the stride.
- ConvTranspose1d keeps the first `T * stride` outputs of the full transposed convolution;
  a streaming step carries the `k - stride` overlapping tail (without bias) to the next step.
Weights are `[out, k, in / groups]` for both (MLX layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

PAD_MODES = ("constant", "replicate")


@dataclass
class ConvState:
    """Inputs carried to the next streaming step, `[B, pad, C_in]`."""

    previous: mx.array


@dataclass
class ConvTrState:
    """Overlapping output tail carried to the next streaming step, `[B, k - stride, C_out]`, bias excluded."""

    partial: mx.array


def _check_input(x: mx.array, channels: int, stride: int, name: str) -> None:
    if x.ndim != 3 or x.shape[-1] != channels:
        raise ValueError(f"{name}: expected input [B, T, {channels}], got shape {tuple(x.shape)}")
    if x.shape[1] == 0 or x.shape[1] % stride:
        raise ValueError(f"{name}: input length {x.shape[1]} is not a positive multiple of the stride {stride}")


class StreamingConv1d(nn.Module):
    """Causal Conv1d; `__call__` for a whole signal, `step` for consecutive chunks, `reset` to restart."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        pad_mode: str = "constant",
    ):
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ValueError(f"unsupported pad_mode {pad_mode!r} (supported: {', '.join(PAD_MODES)})")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}->{out_channels} are not divisible by groups {groups}")
        self.in_channels = in_channels
        self.stride = stride
        self.dilation = dilation
        self.groups = groups
        self.pad_mode = pad_mode
        self.padding = (kernel_size - 1) * dilation + 1 - stride
        if self.padding < 0:
            raise ValueError(f"stride {stride} exceeds the effective kernel size")
        scale = (in_channels // groups * kernel_size) ** -0.5
        self.weight = mx.random.uniform(-scale, scale, (out_channels, kernel_size, in_channels // groups))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.stream_state: ConvState | None = None

    def _conv(self, x: mx.array) -> mx.array:
        y = mx.conv1d(x, self.weight, stride=self.stride, dilation=self.dilation, groups=self.groups)
        return y + self.bias if "bias" in self else y

    def _initial_previous(self, x: mx.array) -> mx.array:
        B, _, C = x.shape
        if self.pad_mode == "replicate":
            return mx.broadcast_to(x[:, :1], (B, self.padding, C))
        return mx.zeros((B, self.padding, C), dtype=x.dtype)

    def __call__(self, x: mx.array) -> mx.array:
        _check_input(x, self.in_channels, self.stride, type(self).__name__)
        if self.padding:
            x = mx.concatenate([self._initial_previous(x), x], axis=1)
        return self._conv(x)

    def step(self, x: mx.array) -> mx.array:
        _check_input(x, self.in_channels, self.stride, type(self).__name__)
        if not self.padding:
            return self._conv(x)
        previous = self._initial_previous(x) if self.stream_state is None else self.stream_state.previous
        x = mx.concatenate([previous, x], axis=1)
        self.stream_state = ConvState(x[:, x.shape[1] - self.padding :])
        return self._conv(x)

    def reset(self) -> None:
        self.stream_state = None


class StreamingConvTranspose1d(nn.Module):
    """Causal ConvTranspose1d (right side trimmed); `__call__`, `step` and `reset` as for the conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}->{out_channels} are not divisible by groups {groups}")
        if kernel_size < stride:
            raise ValueError(f"kernel_size {kernel_size} is smaller than the stride {stride}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.groups = groups
        scale = (out_channels // groups * kernel_size) ** -0.5
        self.weight = mx.random.uniform(-scale, scale, (out_channels, kernel_size, in_channels // groups))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.stream_state: ConvTrState | None = None

    def _full(self, x: mx.array) -> mx.array:
        """The untrimmed transposed convolution without bias, `[B, (T - 1) * stride + k, C_out]`."""
        B, T, _ = x.shape
        K, S, Co = self.kernel_size, self.stride, self.out_channels
        w = self.weight
        if self.groups == 1:
            # One matmul gives every (output channel, tap) product; then overlap-add the taps.
            z = (x @ w.reshape(Co * K, -1).T).reshape(B, T, Co, K)
        elif self.groups == self.in_channels == Co:
            z = x[..., None] * w[:, :, 0]  # depthwise: [B, T, C, K]
        else:
            return mx.conv_transpose1d(x, w, stride=S, groups=self.groups)
        M = -(-K // S)  # taps per output phase
        if M * S != K:
            z = mx.pad(z, [(0, 0), (0, 0), (0, 0), (0, M * S - K)])
        z = z.reshape(B, T, Co, M, S).transpose(0, 3, 1, 4, 2).reshape(B, M, T * S, Co)
        y = z[:, 0] if M == 1 else mx.pad(z[:, 0], [(0, 0), (0, (M - 1) * S), (0, 0)])
        for m in range(1, M):
            y = y + mx.pad(z[:, m], [(0, 0), (m * S, (M - 1 - m) * S), (0, 0)])
        return y[:, : (T - 1) * S + K]

    def __call__(self, x: mx.array) -> mx.array:
        _check_input(x, self.in_channels, 1, type(self).__name__)
        y = self._full(x)[:, : x.shape[1] * self.stride]
        return y + self.bias if "bias" in self else y

    def step(self, x: mx.array) -> mx.array:
        _check_input(x, self.in_channels, 1, type(self).__name__)
        y = self._full(x)
        n = x.shape[1] * self.stride
        tail = self.kernel_size - self.stride
        if tail:
            if self.stream_state is not None:
                y = mx.concatenate([y[:, :tail] + self.stream_state.partial, y[:, tail:]], axis=1)
            self.stream_state = ConvTrState(y[:, n:])
            y = y[:, :n]
        return y + self.bias if "bias" in self else y

    def reset(self) -> None:
        self.stream_state = None
