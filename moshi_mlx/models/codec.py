"""The Mimi codec interface (`MimiLike`), its backends and the default choice.

Two backends compute Mimi: `"mlx"` (our `moshi_mlx.models.mimi.Mimi`, Metal/CUDA/CPU) and
`"rust"` (Kyutai's `rustymimi`, CPU, an optional extra: `pip install "mlx-moshi[rust]"`).
`moshi_mlx.weights.mimi.load_mimi_backend(path, backend)` loads either. Inputs may be mx or numpy
arrays; outputs are mx arrays: codes int32 `[B, K, T]`, pcm float32 `[B, 1, T * 1920]`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol

import mlx.core as mx
import numpy as np

from ..config import MimiConfig
from ..errors import MoshiError
from .mimi import check_codes, check_pcm

FRAME_SIZE = MimiConfig.mimi_202407().frame_size
BINS = MimiConfig.mimi_202407().quantizer_bins


class MimiLike(Protocol):
    """What a Mimi backend offers."""

    num_codebooks: int

    def encode(self, pcm: mx.array | np.ndarray) -> mx.array: ...
    def decode(self, codes: mx.array | np.ndarray) -> mx.array: ...
    def encode_step(self, pcm: mx.array | np.ndarray) -> mx.array: ...
    def decode_step(self, codes: mx.array | np.ndarray) -> mx.array: ...
    def reset(self) -> None: ...


def _pcm(pcm: mx.array | np.ndarray, name: str, frames: int | None) -> np.ndarray:
    check_pcm(pcm, name, 1, FRAME_SIZE, frames)
    return np.ascontiguousarray(np.asarray(pcm), dtype=np.float32)


def _codes(codes: mx.array | np.ndarray, name: str, num_codebooks: int, frames: int | None) -> np.ndarray:
    c = np.asarray(codes)  # rustymimi needs the values anyway
    check_codes(c, name, num_codebooks, BINS, frames, check_range=True)
    return np.ascontiguousarray(c, dtype=np.uint32)


BACKENDS = ("mlx", "rust")


class BackendError(MoshiError, ValueError):
    """A Mimi backend that is unknown or not installed."""


def rust_available() -> bool:
    """Whether the optional `rustymimi` package is installed."""
    return importlib.util.find_spec("rustymimi") is not None


def default_backend() -> str:
    """The Mimi backend to use when none is asked for.

    MLX wherever MLX has a GPU (Metal on macOS, CUDA); on a CPU-only MLX (Linux), rustymimi when
    it is installed (faster there than MLX's CPU kernels), else MLX.
    """
    if mx.default_device() == mx.gpu or not rust_available():
        return "mlx"
    return "rust"


def check_backend(backend: str) -> str:
    """Returns `backend` if it can be used, else raises a one-line `BackendError`."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown Mimi backend {backend!r} (expected one of: {', '.join(BACKENDS)})")
    if backend == "rust" and not rust_available():
        raise BackendError(
            "the rust Mimi backend needs rustymimi: pip install \"mlx-moshi[rust]\" (wheels for CPython "
            "3.10-3.13), or use --mimi-backend mlx"
        )
    return backend


class RustMimi:
    """`rustymimi.Tokenizer` (fp32, CPU) with the same methods, shapes and dtypes as our `Mimi`."""

    def __init__(self, path: str | Path, num_codebooks: int = 8):
        import rustymimi

        self.path = str(path)
        self.num_codebooks = num_codebooks
        self._tokenizer = rustymimi.Tokenizer(self.path, num_codebooks=num_codebooks)

    def encode(self, pcm: mx.array | np.ndarray) -> mx.array:
        """pcm `[B, 1, T]` -> codes `[B, K, T / 1920]` int32."""
        return mx.array(self._tokenizer.encode(_pcm(pcm, "RustMimi.encode", None)).astype(np.int32))

    def decode(self, codes: mx.array | np.ndarray) -> mx.array:
        """codes `[B, K, T]` -> pcm `[B, 1, T * 1920]` float32."""
        return mx.array(self._tokenizer.decode(_codes(codes, "RustMimi.decode", self.num_codebooks, None)))

    def encode_step(self, pcm: mx.array | np.ndarray) -> mx.array:
        """The next frame: pcm `[B, 1, 1920]` -> codes `[B, K, 1]` int32."""
        codes = self._tokenizer.encode_step(_pcm(pcm, "RustMimi.encode_step", 1))
        if codes is None:
            raise RuntimeError("rustymimi produced no codes for a full frame")
        return mx.array(codes.astype(np.int32))

    def decode_step(self, codes: mx.array | np.ndarray) -> mx.array:
        """The next frame: codes `[B, K, 1]` -> pcm `[B, 1, 1920]` float32."""
        pcm = self._tokenizer.decode_step(_codes(codes, "RustMimi.decode_step", self.num_codebooks, 1))
        if pcm is None:
            raise RuntimeError("rustymimi produced no audio for a full frame")
        return mx.array(pcm)

    def reset(self) -> None:
        self._tokenizer.reset()
