"""Token samplers: greedy, temperature, top-k and top-p, built by `make_sampler`.

A sampler maps logits `[..., V]` and an optional `mx.random` key to int32 tokens `[...]`.
Passing an explicit key (split per call by the caller) makes a run reproducible and
independent of the global random state; without a key the global state is used.
Kyutai's defaults: text temperature 0.7 with top-k 25, audio temperature 0.8 with top-k 250.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import mlx.core as mx

from .errors import InvalidArgument

Sampler = Callable[..., mx.array]

TEXT_DEFAULTS = dict(temp=0.7, top_k=25)
AUDIO_DEFAULTS = dict(temp=0.8, top_k=250)


def greedy(logits: mx.array, key: mx.array | None = None) -> mx.array:
    """Index of the largest logit (first one on exact ties), int32."""
    return mx.argmax(logits, axis=-1).astype(mx.int32)


def top_k_filter(logits: mx.array, k: int) -> mx.array:
    """Keeps the `k` largest logits of the last axis and sets the others to -inf."""
    V = logits.shape[-1]
    if k <= 0 or k >= V:
        return logits
    top = mx.argpartition(-logits, kth=k - 1, axis=-1)[..., :k]  # exactly k indices, even on ties
    keep = mx.put_along_axis(mx.zeros(logits.shape, dtype=mx.bool_), top, mx.array(True), axis=-1)
    return mx.where(keep, logits, -mx.inf)


def top_p_filter(logits: mx.array, p: float) -> mx.array:
    """Nucleus filter: keeps the most likely tokens whose probability mass before them is <= `p`.

    Same rule as torch moshi `sample_top_p`: a token is dropped when the cumulative
    probability of the strictly more likely tokens already exceeds `p`.
    """
    if p <= 0.0 or p >= 1.0:
        return logits
    probs = mx.softmax(logits.astype(mx.float32), axis=-1)
    order = mx.argsort(-probs, axis=-1)
    sorted_probs = mx.take_along_axis(probs, order, axis=-1)
    mass_before = mx.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep_sorted = mass_before <= p
    ranks = mx.argsort(order, axis=-1)
    keep = mx.take_along_axis(keep_sorted, ranks, axis=-1)
    return mx.where(keep, logits, -mx.inf)


def _categorical(logits: mx.array, temp: float, top_k: int, top_p: float, key: mx.array | None) -> mx.array:
    x = logits.astype(mx.float32)
    if 0 < top_k < x.shape[-1] and not 0.0 < top_p < 1.0:
        return _top_k_categorical(x, temp, top_k, key)
    x = top_k_filter(x, top_k)
    x = top_p_filter(x / temp, top_p)
    return mx.random.categorical(x, axis=-1, key=key).astype(mx.int32)


def _top_k_categorical(x: mx.array, temp: float, k: int, key: mx.array | None) -> mx.array:
    """Draws from `softmax(x / temp)` restricted to the `k` largest logits (exactly `k`, even on
    ties), by the Gumbel-max rule on those `k` values only: the same distribution as
    `categorical(top_k_filter(x, k) / temp)`, in a few graph nodes (Moshi samples 9 times a frame)."""
    V = x.shape[-1]
    top = mx.argpartition(x, kth=V - k, axis=-1)[..., V - k :]
    noisy = mx.take_along_axis(x, top, axis=-1) / temp + mx.random.gumbel(top.shape, key=key)
    return mx.take_along_axis(top, mx.argmax(noisy, axis=-1, keepdims=True), axis=-1)[..., 0].astype(mx.int32)


def check_sampling(temp: float, top_k: int, top_p: float, stream: str = "") -> None:
    """Raises a one-line `InvalidArgument` for a value no sampler accepts; `stream` names it ("text ")."""
    if temp < 0:
        raise InvalidArgument(f"{stream}temperature must be >= 0, got {temp}")
    if top_k < 0:
        raise InvalidArgument(f"{stream}top_k must be >= 0, got {top_k}")
    if not 0.0 <= top_p <= 1.0:
        raise InvalidArgument(f"{stream}top_p must be in [0, 1], got {top_p}")


def make_sampler(temp: float = 0.0, top_k: int = 0, top_p: float = 0.0, compile: bool = True) -> Sampler:
    """Builds a sampler `f(logits, key=None) -> tokens`.

    Args:
        temp: Softmax temperature; ``0`` means greedy (argmax).
        top_k: Keep only the ``top_k`` most likely tokens (``0`` disables).
        top_p: Nucleus sampling mass in (0, 1) (``0`` disables). With both set, top-k is
            applied first, then top-p on the renormalised distribution.
        compile: Wrap the sampling kernel in ``mx.compile``.

    Returns:
        A callable mapping logits ``[..., V]`` (and an optional ``mx.random`` key) to int32
        tokens ``[...]``.
    """
    check_sampling(temp, top_k, top_p)
    if temp == 0:
        return greedy
    kernel = partial(_categorical, temp=temp, top_k=top_k, top_p=top_p)
    keyed = lambda logits, key: kernel(logits, key=key)
    unkeyed = lambda logits: kernel(logits, key=None)
    if compile:
        keyed = mx.compile(keyed)
        unkeyed = mx.compile(unkeyed, inputs=mx.random.state, outputs=mx.random.state)

    def sampler(logits: mx.array, key: mx.array | None = None) -> mx.array:
        return unkeyed(logits) if key is None else keyed(logits, key)

    sampler.temp, sampler.top_k, sampler.top_p = temp, top_k, top_p  # type: ignore[attr-defined]
    return sampler


def text_sampler(temp: float = TEXT_DEFAULTS["temp"], top_k: int = TEXT_DEFAULTS["top_k"], top_p: float = 0.0) -> Sampler:
    """Kyutai's default text sampler (temperature 0.7, top-k 25)."""
    return make_sampler(temp, top_k, top_p)


def audio_sampler(
    temp: float = AUDIO_DEFAULTS["temp"], top_k: int = AUDIO_DEFAULTS["top_k"], top_p: float = 0.0
) -> Sampler:
    """Kyutai's default audio sampler (temperature 0.8, top-k 250)."""
    return make_sampler(temp, top_k, top_p)


@dataclass
class SamplingParams:
    """Sampling of a conversation; Kyutai's defaults: text temperature 0.7, top-k 25; audio
    temperature 0.8, top-k 250; top-p off (0). `seed` makes a run reproducible."""

    text_temp: float = TEXT_DEFAULTS["temp"]
    text_top_k: int = TEXT_DEFAULTS["top_k"]
    audio_temp: float = AUDIO_DEFAULTS["temp"]
    audio_top_k: int = AUDIO_DEFAULTS["top_k"]
    seed: int | None = None
    text_top_p: float = 0.0
    audio_top_p: float = 0.0

    def __post_init__(self) -> None:
        check_sampling(self.text_temp, self.text_top_k, self.text_top_p, "text ")
        check_sampling(self.audio_temp, self.audio_top_k, self.audio_top_p, "audio ")

    def text_sampler(self) -> Sampler:
        return make_sampler(self.text_temp, self.text_top_k, self.text_top_p)

    def audio_sampler(self) -> Sampler:
        return make_sampler(self.audio_temp, self.audio_top_k, self.audio_top_p)
