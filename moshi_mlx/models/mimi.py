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
        fs = self.frame_size
        if pcm.ndim != 3 or pcm.shape[1] != self.cfg.seanet.channels:
            raise ValueError(f"{name}: expected pcm [B, {self.cfg.seanet.channels}, T], got shape {tuple(pcm.shape)}")
        if not mx.issubdtype(pcm.dtype, mx.floating):
            raise ValueError(f"{name}: expected float pcm, got dtype {pcm.dtype} for shape {tuple(pcm.shape)}")
        T = pcm.shape[-1]
        if frames is not None and T != frames * fs:
            raise ValueError(f"{name}: expected pcm [B, 1, {frames * fs}], got shape {tuple(pcm.shape)}")
        if T == 0 or T % fs:
            raise ValueError(
                f"{name}: pcm length {T} (shape {tuple(pcm.shape)}) is not a positive multiple of {fs} samples; "
                "pad the end with zeros"
            )
        return pcm.astype(mx.float32).transpose(0, 2, 1)

    def _check_codes(self, codes: mx.array | np.ndarray, name: str, frames: int | None = None) -> mx.array:
        codes = _as_array(codes, name)
        K = self.num_codebooks
        if codes.ndim != 3 or not 1 <= codes.shape[1] <= K or codes.shape[2] == 0:
            raise ValueError(f"{name}: expected codes [B, K<={K}, T>0], got shape {tuple(codes.shape)}")
        if frames is not None and codes.shape[2] != frames:
            raise ValueError(f"{name}: expected codes [B, K, {frames}], got shape {tuple(codes.shape)}")
        if not mx.issubdtype(codes.dtype, mx.integer):
            raise ValueError(f"{name}: expected integer codes, got dtype {codes.dtype} for shape {tuple(codes.shape)}")
        lo, hi = codes.min().item(), codes.max().item()
        if lo < 0 or hi >= self.cfg.quantizer_bins:
            raise ValueError(
                f"{name}: codes of shape {tuple(codes.shape)} range over [{lo}, {hi}], "
                f"outside [0, {self.cfg.quantizer_bins - 1}]"
            )
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
