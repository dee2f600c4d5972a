"""The Mimi codec interface (`MimiLike`), its backends and the default choice.

Two backends compute Mimi: `"mlx"` (our `moshi_mlx.models.mimi.Mimi`, Metal/CUDA/CPU) and
`"rust"` (Kyutai's `rustymimi`, CPU, an optional extra: `pip install "mlx-moshi[rust]"`).
`moshi_mlx.weights.mimi.load_mimi_backend(path, backend)` loads either. Inputs may be mx or numpy
arrays; outputs are mx arrays: codes int32 `[B, K, T]`, pcm float32 `[B, 1, T * 1920]`.
"""

from __future__ import annotations

import ctypes
import importlib.util
import platform
import sys
import threading
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
            'the rust Mimi backend needs rustymimi: pip install "mlx-moshi[rust]" (wheels for CPython '
            "3.10-3.13), or use --mimi-backend mlx"
        )
    return backend


# rustymimi 0.4.1 (measured): its transformers index a rotary table of `max_seq_len` positions
# (default 8192) at Mimi's 25 Hz inner rate, two per 80 ms frame, so an instance fails at frame
# `max_seq_len // 2` = 4096 (327.7 s) in encode_step and decode_step alike; batch encode/decode
# use the same positions. Its KV caches grow by ~64 KB per frame per side and are never trimmed.
# `Tokenizer.reset()` neither frees them nor rewinds the positions; only a new instance does, and
# building one holds the GIL for 0.15-0.3 s and ~350 MB (the weights).
#
# How much warm-up a new instance needs (benchmarks/mimi_swap.py depth: torch moshi on the speech-fitted
# random fixture, a fresh Mimi fed the W frames before frame 600, against the continuing stream). The
# SEANet convs are exact at once; each transformer layer attends 250 steps (10 s) back, but reads the
# layer below, so the output depends on up to 8 x 250 steps (80 s) of input: that compounding is the
# only memory beyond the window, and it is small. Relative max-abs difference of the latent: 3e-5 after
# 10 s (layer 0 at the fp32 floor of 7e-8 from RoPE's absolute positions, layers 1-7 1e-5 to 3e-5),
# 3e-7 after 20 s (layers 0-3 at the floor), 2e-7 (floor) after 30 s; codes 100 % equal throughout.
# (The 31 % once reported after 10 s does not reproduce with frame-aligned warm-up.) rustymimi, one swap
# after 10 s of warm-up (benchmarks/mimi_swap.py swap): codes 100 % equal to the unswapped stream, decoded
# audio within 0.1 % of its peak, no added step at the boundary (2e-4 against a p99 of 0.39 between
# samples), 0.0 dB log-spectral distance; the crossfade matters only for warm-ups of a few seconds.
#
# glibc's malloc keeps the memory of dropped instances: with its default (dynamic) mmap threshold, RSS
# grew by ~350 MB every second or third rebuild (437 -> 1262 MB over 6 rebuilds, one instance alive).
# A fixed 1 MB threshold (weights and KV buffers mmapped, returned on free) plus malloc_trim after each
# drop keeps it flat (392-393 MB over 8 rebuilds); step time unchanged within this machine's noise.
RUST_MAX_SEQ_LEN = 8192
SWAP_EVERY = 1000  # frames between swaps (80 s): KV caches stay under ~145 MB, one rebuild per 80 s
WARMUP = 125  # frames the next instance is fed before it takes over (10 s)
CROSSFADE = 2  # decoder frames mixed from the old instance into the new one at a swap (160 ms)
_SIDES = ("enc", "dec")
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_MMAP_THRESHOLD = 1 << 20


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (Linux), else None (macOS, musl: left as they are)."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


class _Instance:
    """One `rustymimi.Tokenizer` and the frames each side has pushed through it (positions used)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.frames = {s: 0 for s in _SIDES}


class RustMimi:
    """`rustymimi.Tokenizer` (fp32, CPU) with the same methods, shapes and dtypes as our `Mimi`.

    Streams of any length: each side (encoder, decoder) moves to a new rustymimi instance every
    `swap_every` frames, long before the old one reaches rustymimi's position limit, which also
    bounds the memory its KV caches take. The next instance is fed the last `warmup` frames (pcm for
    the encoder, codes for the decoder) alongside the current one, so it takes over with the same
    context; the decoder's output fades from the old instance to the new one over `crossfade` frames.
    That costs one extra encode/decode step per frame during the warm-up, and a second instance held
    in memory throughout (it is built ahead, in a background thread). Instances are shared by both
    sides. `max_seq_len` is rustymimi's rotary table size (tests make it small).
    """

    def __init__(
        self,
        path: str | Path,
        num_codebooks: int = 8,
        *,
        swap_every: int = SWAP_EVERY,
        warmup: int = WARMUP,
        crossfade: int = CROSSFADE,
        max_seq_len: int = RUST_MAX_SEQ_LEN,
    ):
        import rustymimi

        limit = max_seq_len // 2
        if swap_every < 1 or not 0 <= crossfade <= warmup or swap_every + warmup > limit:
            raise ValueError(
                f"RustMimi: need swap_every >= 1, 0 <= crossfade <= warmup and swap_every + warmup <= "
                f"{limit} (max_seq_len {max_seq_len} / 2), got {swap_every}, {crossfade}, {warmup}"
            )
        self.path = str(path)
        self.num_codebooks = num_codebooks
        self.swap_every, self.warmup, self.crossfade = swap_every, warmup, crossfade
        self.max_seq_len = max_seq_len
        self.swaps = {s: 0 for s in _SIDES}  # swaps done per side, for tests and benchmarks
        self._libc = _glibc()
        if self._libc is not None:  # process-wide; see the glibc note above
            self._libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        self._new_tokenizer = lambda: rustymimi.Tokenizer(
            self.path, num_codebooks=num_codebooks, max_seq_len=max_seq_len
        )
        self._gens = {0: _Instance(self._new_tokenizer()), 1: _Instance(self._new_tokenizer())}
        self._side = {s: 0 for s in _SIDES}  # the generation each side runs on
        self._building: tuple[int, threading.Thread, list] | None = None
        self._fade: np.ndarray | None = None  # decoder output of the old instance during the crossfade

    # -- instances --------------------------------------------------------------------------------
    def _build(self, gen: int) -> None:
        """Starts building generation `gen` in a background thread."""
        box: list = []

        def run() -> None:
            try:
                box.append(_Instance(self._new_tokenizer()))
            except BaseException as e:  # re-raised in the caller's thread by _gen
                box.append(e)

        thread = threading.Thread(target=run, name="rustymimi-build", daemon=True)
        thread.start()
        self._building = (gen, thread, box)

    def _gen(self, gen: int) -> _Instance:
        """Generation `gen`, waiting for its background build, or building it now."""
        if gen not in self._gens:
            if self._building is not None and self._building[0] == gen:
                _, thread, box = self._building
                thread.join()
                self._building = None
                if isinstance(box[0], BaseException):
                    raise box[0]
                self._gens[gen] = box[0]
            else:
                self._gens[gen] = _Instance(self._new_tokenizer())
        return self._gens[gen]

    def _settle(self) -> None:
        """Frees generations no side needs any more and starts building the next spare."""
        newest = max(self._side.values())
        for s in _SIDES:  # a side that has not used its instance carries no state: it can jump
            if self._gens[self._side[s]].frames[s] == 0:
                self._side[s] = newest
        oldest = min(self._side.values())
        dropped = [g for g in self._gens if g < oldest]
        for g in dropped:
            del self._gens[g]
        if dropped:
            self._trim()
        spare = newest + 1
        if len(self._gens) < 2 and spare not in self._gens and self._building is None:
            self._build(spare)

    def _step(self, side: str, call, x: np.ndarray) -> np.ndarray:
        cur = self._gens[self._side[side]]
        used = cur.frames[side]
        if used + 1 > self.max_seq_len // 2:  # only reachable through batch calls mixed with steps
            raise RuntimeError(f"RustMimi: rustymimi instance exhausted on the {side} side")
        out = call(cur.tokenizer, x)
        cur.frames[side] += 1
        if used >= self.swap_every:  # warm-up window: the next instance sees the same input
            nxt = self._gen(self._side[side] + 1)
            new = call(nxt.tokenizer, x)
            nxt.frames[side] += 1
            left = self.swap_every + self.warmup - used  # frames until the swap, this one included
            if side == "dec" and left <= self.crossfade:
                n = out.shape[-1]
                pos = (self.crossfade - left) * n + np.arange(n) + 0.5
                w = (0.5 - 0.5 * np.cos(np.pi * pos / (self.crossfade * n))).astype(np.float32)
                out = (1 - w) * out + w * new
            if left == 1:
                self._side[side] += 1
                self.swaps[side] += 1
                # Drop this frame's references first: the old instance must be freed (and trimmed)
                # before the spare's build starts, or three instances briefly coexist (+350 MB peak).
                del cur, nxt
                self._settle()
        return out

    # -- MimiLike ---------------------------------------------------------------------------------
    def encode(self, pcm: mx.array | np.ndarray) -> mx.array:
        """pcm `[B, 1, T]` -> codes `[B, K, T / 1920]` int32 (at most `max_seq_len / 2` frames)."""
        x = _pcm(pcm, "RustMimi.encode", None)
        return mx.array(self._batch(lambda tok: tok.encode(x), x.shape[-1] // FRAME_SIZE).astype(np.int32))

    def decode(self, codes: mx.array | np.ndarray) -> mx.array:
        """codes `[B, K, T]` -> pcm `[B, 1, T * 1920]` float32 (at most `max_seq_len / 2` frames)."""
        c = _codes(codes, "RustMimi.decode", self.num_codebooks, None)
        return mx.array(self._batch(lambda tok: tok.decode(c), c.shape[-1]))

    def _batch(self, call, frames: int) -> np.ndarray:
        """Runs a batch call on a fresh instance (rustymimi's batch calls use the streaming positions)."""
        if frames > self.max_seq_len // 2:
            raise ValueError(
                f"RustMimi: rustymimi takes at most {self.max_seq_len // 2} frames in one call, got {frames}: "
                "stream longer audio with encode_step/decode_step"
            )
        spare = max(self._side.values()) + 1
        idle = spare in self._gens and not any(self._gens[spare].frames.values())
        tokenizer = self._gens.pop(spare).tokenizer if idle else self._new_tokenizer()
        out = call(tokenizer)
        del tokenizer
        self._trim()
        self._settle()
        return out

    def _trim(self) -> None:
        """Hands the memory of dropped instances back to the system (glibc keeps it otherwise)."""
        if self._libc is not None:
            self._libc.malloc_trim(0)

    def encode_step(self, pcm: mx.array | np.ndarray) -> mx.array:
        """The next frame: pcm `[B, 1, 1920]` -> codes `[B, K, 1]` int32."""
        codes = self._step("enc", lambda tok, x: tok.encode_step(x), _pcm(pcm, "RustMimi.encode_step", 1))
        if codes is None:
            raise RuntimeError("rustymimi produced no codes for a full frame")
        return mx.array(codes.astype(np.int32))

    def decode_step(self, codes: mx.array | np.ndarray) -> mx.array:
        """The next frame: codes `[B, K, 1]` -> pcm `[B, 1, 1920]` float32."""
        c = _codes(codes, "RustMimi.decode_step", self.num_codebooks, 1)
        pcm = self._step("dec", lambda tok, x: tok.decode_step(x), c)
        if pcm is None:
            raise RuntimeError("rustymimi produced no audio for a full frame")
        return mx.array(pcm)

    def reset(self) -> None:
        """Starts a new stream (the instances' used positions still count towards their swap)."""
        for inst in self._gens.values():
            inst.tokenizer.reset()
