"""Text-only generation with the LM's text stream (Helium, or Moshi with silent audio streams).

The prompt is prefilled in one causal call, then tokens are generated one at a time. Audio
streams, if the model has any, get the zero token (-1), whose embedding is exactly 0, so
only the text contributes (HF `MoshiForCausalLM` likewise embeds text only).
"""

from __future__ import annotations

from typing import Iterator

import mlx.core as mx
import numpy as np

from .models.lm import Lm
from .sampling import Sampler, make_sampler


def text_inputs(lm: Lm, ids: mx.array) -> mx.array:
    """`[B, T]` text ids -> `[B, 1 + n_q, T]` model tokens with zero-token audio streams."""
    B, T = ids.shape
    audio = mx.full((B, lm.cfg.n_q, T), lm.cfg.zero_token_id, dtype=mx.int32)
    return mx.concatenate([ids.astype(mx.int32)[:, None], audio], axis=1)


def stream_text(
    lm: Lm,
    prompt_ids: mx.array | np.ndarray | list[list[int]],
    max_new_tokens: int,
    sampler: Sampler | None = None,
    seed: int | None = None,
) -> Iterator[mx.array]:
    """Yields `max_new_tokens` int32 token arrays `[B]`, one per step, after a one-call prefill.

    Args:
        lm: The language model (its text stream is used).
        prompt_ids: ``[B, T]`` prompt ids (``T >= 1``; include BOS yourself if the model wants it).
        max_new_tokens: Number of tokens to generate.
        sampler: Token sampler; default greedy.
        seed: Seed of an explicit random key (reproducible sampling); None uses the global state.

    Returns:
        An iterator of ``[B]`` token arrays; each is scheduled with ``mx.async_eval`` before
        it is yielded, so the next step's graph is built while it computes.
    """
    ids = mx.array(prompt_ids).astype(mx.int32)
    if ids.ndim != 2 or ids.shape[1] < 1:
        raise ValueError(f"prompt_ids must be [B, T] with T >= 1, got {tuple(ids.shape)}")
    sampler = sampler or make_sampler(0.0)
    key = mx.random.key(seed) if seed is not None else None
    cache = lm.make_cache()
    _, logits = lm.step(text_inputs(lm, ids), cache)  # causal prefill of the whole prompt
    for _ in range(max_new_tokens):
        sub = None
        if key is not None:
            key, sub = mx.random.split(key)
        token = sampler(logits[:, -1].astype(mx.float32), sub)
        mx.async_eval(token)
        yield token
        _, logits = lm.step(text_inputs(lm, token[:, None]), cache)


def generate_text(
    lm: Lm,
    prompt_ids: mx.array | np.ndarray | list[list[int]],
    max_new_tokens: int,
    sampler: Sampler | None = None,
    seed: int | None = None,
    eos_id: int | None = None,
) -> mx.array:
    """Prompt followed by up to `max_new_tokens` generated ids, `[B, T + N]` int32.

    Stops early once every row has produced `eos_id` (later positions of finished rows are
    filled with `eos_id`).
    """
    prompt = mx.array(prompt_ids).astype(mx.int32)
    out: list[mx.array] = []
    done = np.zeros(prompt.shape[0], dtype=bool)
    for token in stream_text(lm, prompt, max_new_tokens, sampler, seed):
        if eos_id is not None:
            token = mx.where(mx.array(done), eos_id, token)
            done |= np.array(token) == eos_id  # the token reaches Python here anyway
        out.append(token)
        if eos_id is not None and done.all():
            break
    if not out:
        return prompt
    return mx.concatenate([prompt, mx.stack(out, axis=1)], axis=1)
