"""Mimi: 24 kHz audio <-> 12.5 Hz frames of codes, in batch (`encode`/`decode`) or streaming.

Audio is `[B, 1, T]` float, codes `[B, K, T / 1920]` int32, as in torch moshi. Unlike
Kyutai's MLX Mimi, both transformers are causal with a 250-frame window in every mode
(also for the 2-frame steps of streaming) and use exact (erf) GELU, like torch and Rust.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..config import MimiConfig
from ..modules.attention import Cache
from ..modules.conv import StreamingConv1d, StreamingConvTranspose1d
from ..modules.quantizer import SplitResidualVectorQuantizer
from ..modules.seanet import SeanetDecoder, SeanetEncoder
from ..modules.transformer import Transformer


@dataclass
class MimiState:
    """Streaming KV caches of the two transformers (None until the first step)."""

    encoder_cache: list[Cache] | None = None
    decoder_cache: list[Cache] | None = None


def _as_array(x: mx.array | np.ndarray, name: str) -> mx.array:
    if isinstance(x, np.ndarray):
        return mx.array(x)
    if isinstance(x, mx.array):
        return x
    raise TypeError(f"{name}: expected an mx.array or numpy array, got {type(x).__name__}")


def _is_kind(x: mx.array | np.ndarray, kind: str) -> bool:
    if isinstance(x, np.ndarray):
        return np.issubdtype(x.dtype, np.floating if kind == "float" else np.integer)
    return mx.issubdtype(x.dtype, mx.floating if kind == "float" else mx.integer)


def check_pcm(pcm: mx.array | np.ndarray, name: str, channels: int, frame_size: int, frames: int | None) -> None:
    """Raises a one-line ValueError unless `pcm` is float `[B, channels, T]`, T a positive multiple
    of `frame_size` (exactly `frames` frames when given)."""
    shape = tuple(pcm.shape)
    if len(shape) != 3 or shape[1] != channels:
        raise ValueError(f"{name}: expected pcm [B, {channels}, T], got shape {shape}")
    if not _is_kind(pcm, "float"):
        raise ValueError(f"{name}: expected float pcm, got dtype {pcm.dtype} for shape {shape}")
    T = shape[-1]
    if frames is not None and T != frames * frame_size:
        raise ValueError(f"{name}: expected pcm [B, {channels}, {frames * frame_size}], got shape {shape}")
    if T == 0 or T % frame_size:
        raise ValueError(
            f"{name}: pcm length {T} (shape {shape}) is not a positive multiple of {frame_size} samples; "
            "pad the end with zeros"
        )


def check_codes(
    codes: mx.array | np.ndarray, name: str, num_codebooks: int, bins: int, frames: int | None, check_range: bool
) -> None:
    """Raises a one-line ValueError unless `codes` are integers `[B, K <= num_codebooks, T > 0]`
    (exactly `frames` frames when given) and, with `check_range`, within `[0, bins)`."""
    shape = tuple(codes.shape)
    if len(shape) != 3 or not 1 <= shape[1] <= num_codebooks or shape[2] == 0:
        raise ValueError(f"{name}: expected codes [B, K<={num_codebooks}, T>0], got shape {shape}")
    if frames is not None and shape[2] != frames:
        raise ValueError(f"{name}: expected codes [B, K, {frames}], got shape {shape}")
    if not _is_kind(codes, "int"):
        raise ValueError(f"{name}: expected integer codes, got dtype {codes.dtype} for shape {shape}")
    if check_range:
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= bins:
            raise ValueError(f"{name}: codes of shape {shape} range over [{lo}, {hi}], outside [0, {bins - 1}]")


class Mimi(nn.Module):
    """The Mimi codec; parameters are named after torch moshi's modules (see `weights/mimi.py`)."""

    def __init__(self, cfg: MimiConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.seanet.dimension
        s = cfg.resample_stride
        self.encoder = SeanetEncoder(cfg.seanet)
        self.encoder_transformer = Transformer(cfg.transformer)
        self.downsample = StreamingConv1d(d, d, 2 * s, stride=s, bias=False, pad_mode="replicate")
        self.quantizer = SplitResidualVectorQuantizer(
            cfg.quantizer_dimension, d, cfg.num_codebooks, cfg.quantizer_bins, cfg.n_q_semantic
        )
        # Depthwise: torch's default `upsample_channel_wise_bug=True`.
        self.upsample = StreamingConvTranspose1d(d, d, 2 * s, stride=s, groups=d, bias=False)
        self.decoder_transformer = Transformer(cfg.transformer)
        self.decoder = SeanetDecoder(cfg.seanet)
        self.stream_state = MimiState()

    @property
    def frame_size(self) -> int:
        return self.cfg.frame_size

    @property
    def num_codebooks(self) -> int:
        return self.cfg.num_codebooks

    def _check_pcm(self, pcm: mx.array | np.ndarray, name: str, frames: int | None = None) -> mx.array:
        pcm = _as_array(pcm, name)
        check_pcm(pcm, name, self.cfg.seanet.channels, self.frame_size, frames)
        return pcm.astype(mx.float32).transpose(0, 2, 1)

    def _check_codes(self, codes: mx.array | np.ndarray, name: str, frames: int | None = None) -> mx.array:
        # Values of numpy codes are checked for free; checking mx codes would force their
        # evaluation (a sync in the streaming hot path), so only batch `decode` does it.
        check_range = isinstance(codes, np.ndarray) or frames is None
        codes = _as_array(codes, name)
        check_codes(codes, name, self.num_codebooks, self.cfg.quantizer_bins, frames, check_range)
        return codes.astype(mx.int32)

    # Batch.
    def encode_latent(self, pcm: mx.array | np.ndarray) -> mx.array:
        """Pre-quantization latent `[B, T / 1920, 512]` of a whole signal."""
        x = self.encoder(self._check_pcm(pcm, "Mimi.encode"))
        return self.downsample(self.encoder_transformer(x))

    def encode(self, pcm: mx.array | np.ndarray) -> mx.array:
        """pcm `[B, 1, T]` (T a multiple of 1920) -> codes `[B, K, T / 1920]` int32."""
        return self.quantizer.encode(self.encode_latent(pcm))

    def decode(self, codes: mx.array | np.ndarray) -> mx.array:
        """codes `[B, K, T]` -> pcm `[B, 1, T * 1920]` float32."""
        x = self.upsample(self.quantizer.decode(self._check_codes(codes, "Mimi.decode")))
        return self.decoder(self.decoder_transformer(x)).transpose(0, 2, 1)

    # Streaming.
    def encode_latent_step(self, pcm: mx.array | np.ndarray) -> mx.array:
        """Pre-quantization latent `[B, 1, 512]` of the next 1920-sample frame."""
        st = self.stream_state
        x = self.encoder.step(self._check_pcm(pcm, "Mimi.encode_step", frames=1))
        if st.encoder_cache is None:
            st.encoder_cache = self.encoder_transformer.make_cache()
        return self.downsample.step(self.encoder_transformer(x, st.encoder_cache))

    def encode_step(self, pcm: mx.array | np.ndarray) -> mx.array:
        """The next frame: pcm `[B, 1, 1920]` -> codes `[B, K, 1]` int32."""
        return self.quantizer.encode(self.encode_latent_step(pcm))

    def decode_step(self, codes: mx.array | np.ndarray) -> mx.array:
        """The next frame: codes `[B, K, 1]` -> pcm `[B, 1, 1920]` float32."""
        st = self.stream_state
        x = self.upsample.step(self.quantizer.decode(self._check_codes(codes, "Mimi.decode_step", frames=1)))
        if st.decoder_cache is None:
            st.decoder_cache = self.decoder_transformer.make_cache()
        return self.decoder.step(self.decoder_transformer(x, st.decoder_cache)).transpose(0, 2, 1)

    def reset(self) -> None:
        """Forgets all streaming state (encoder and decoder side)."""
        self.stream_state = MimiState()
        for _, module in self.named_modules():
            if module is not self and hasattr(module, "step") and hasattr(module, "reset"):
                module.reset()
