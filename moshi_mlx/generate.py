"""Generation: `LmGen`, Moshi's streaming step (delays, initial tokens, text and audio samplers),
and text-only generation (`stream_text`, `generate_text`: Helium, or Moshi's text stream alone).

Follows torch moshi `LMGen` semantics exactly: the user frame given at step `o` is written
`delay` positions ahead in a small token ring and fed to the model in the same step (for
delay-0 codebooks); sampled text/audio tokens are fed back one step later; the frame
returned at step `o` is frame `o - max_delay` of every generated stream, text aligned with
its audio; the first `max_delay` steps return None.
"""

from __future__ import annotations

from typing import Iterator

import mlx.core as mx
import numpy as np

from .errors import InvalidArgument
from .models.lm import Lm
from .sampling import AUDIO_DEFAULTS, TEXT_DEFAULTS, Sampler, make_sampler


class LmGen:
    """Streaming generator over an `Lm`; holds its own KV caches and token ring.

    Memory is bounded when the model config has a `context` (ring KV cache), so a
    conversation can run for any number of steps.
    """

    def __init__(
        self,
        lm: Lm,
        text_sampler: Sampler | None = None,
        audio_sampler: Sampler | None = None,
        batch_size: int = 1,
        seed: int | None = None,
        key: mx.array | None = None,
    ):
        cfg = lm.cfg
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
        self.lm = lm
        self.text_sampler = text_sampler or make_sampler(**TEXT_DEFAULTS)
        self.audio_sampler = audio_sampler or make_sampler(**AUDIO_DEFAULTS)
        self.batch_size = batch_size
        self.num_user_codebooks = cfg.n_q - cfg.dep_q
        self._seed_key = key if key is not None else (mx.random.key(seed) if seed is not None else None)
        # Ring of max_delay + 2 token columns (torch `_LMGenState.cache`): enough for writes
        # up to max_delay steps ahead of the read position and reads max_delay behind.
        self._ring = cfg.max_delay + 2
        self._initial = np.array([cfg.text_initial_token_id] + [cfg.initial_token_id] * cfg.n_q, dtype=np.int32)
        self.reset()

    def reset(self) -> None:
        """Starts a new conversation: fresh KV caches, token ring and random key; weights kept."""
        cfg = self.lm.cfg
        self.cache = self.lm.make_cache()
        self.dcache = self.lm.make_depformer_cache() if cfg.dep_q > 0 else []
        self.tokens = mx.full((self.batch_size, cfg.num_codebooks, self._ring), cfg.ungenerated_token_id, mx.int32)
        self.offset = 0
        self.key = self._seed_key

    def _split_key(self, n: int) -> list[mx.array | None]:
        if self.key is None:
            return [None] * n
        keys = mx.random.split(self.key, n + 1)
        self.key = keys[0]
        return [keys[i + 1] for i in range(n)]

    def _user_tokens(self, user_codes: mx.array | np.ndarray) -> mx.array:
        codes = mx.array(user_codes).astype(mx.int32) if not isinstance(user_codes, mx.array) else user_codes
        if codes.ndim == 3:
            codes = codes[:, :, 0] if codes.shape[2] == 1 else codes
        B, n = self.batch_size, self.num_user_codebooks
        if codes.ndim != 2 or codes.shape[0] != B or codes.shape[1] < n:
            raise InvalidArgument(f"user codes must be [{B}, >={n}] or [{B}, >={n}, 1], got {tuple(codes.shape)}")
        return codes[:, :n].astype(mx.int32)

    def step(self, user_codes: mx.array | np.ndarray, force_tokens: mx.array | None = None) -> mx.array | None:
        """Runs one 80 ms frame.

        Args:
            user_codes: The user's audio codes for this frame, ``[B, n_q - dep_q]`` or
                ``[B, n_q - dep_q, 1]`` (extra codebooks are ignored).
            force_tokens: Optional ``[B, 1 + dep_q]`` tokens replacing what this step would
                sample (teacher forcing, e.g. a prompt); entries equal to
                ``ungenerated_token_id`` (-2) are sampled as usual.

        Returns:
            Int32 tokens ``[B, 1 + dep_q]`` (text, then Moshi's audio codebooks) of frame
            ``step - max_delay``, or None during the first ``max_delay`` steps. Evaluation is
            scheduled (``mx.async_eval``); reading the result waits for it.
        """
        lm, cfg = self.lm, self.lm.cfg
        user = self._user_tokens(user_codes)
        o, CT, dq = self.offset, self._ring, cfg.dep_q
        delays = cfg.delays

        # User codebook j (stream 1 + dep_q + j) is written `delay` columns ahead.
        for j in range(self.num_user_codebooks):
            k = 1 + dq + j
            self.tokens[:, k, (o + delays[k]) % CT] = user[:, j]
        column = self.tokens[:, :, o % CT]  # (B, K)
        is_init = mx.array(np.array([o <= d for d in delays]))
        inputs = mx.where(is_init[None, :], mx.array(self._initial)[None, :], column)

        keys = self._split_key(1 + dq)
        hidden, text_logits = lm.step(inputs[:, :, None], self.cache)
        text = self.text_sampler(text_logits[:, 0].astype(mx.float32), keys[0])
        forced = None if force_tokens is None else mx.array(force_tokens).astype(mx.int32)
        if forced is not None:
            text = mx.where(forced[:, 0] != cfg.ungenerated_token_id, forced[:, 0], text)
        generated = [text]
        # Start computing the temporal transformer now, so that it runs while Python builds
        # the depformer's graph (no sync: nothing is read back here).
        mx.async_eval(text, hidden)
        if dq > 0:
            for c in self.dcache:
                c.reset()
            prev = text
            for k in range(dq):
                logits = lm.depformer_step(k, prev, hidden, self.dcache)
                tok = self.audio_sampler(logits.astype(mx.float32), keys[1 + k])
                if forced is not None:
                    tok = mx.where(forced[:, 1 + k] != cfg.ungenerated_token_id, forced[:, 1 + k], tok)
                generated.append(tok)
                prev = tok

        self.offset = o = o + 1
        self.tokens[:, : 1 + dq, o % CT] = mx.stack(generated, axis=1)
        if o <= cfg.max_delay:
            mx.async_eval(self.tokens)
            return None
        # Column c of generated stream k holds its frame c - 1 - delay_k: read frame o - 1 - max_delay.
        cols = [self.tokens[:, k, (o - cfg.max_delay + delays[k]) % CT] for k in range(1 + dq)]
        out = mx.stack(cols, axis=1)
        mx.async_eval(self.tokens, out)
        return out


# Text-only generation with the LM's text stream (Helium, or Moshi with silent audio streams).
# The prompt is prefilled in one causal call, then tokens are generated one at a time. Audio
# streams, if the model has any, get the zero token (-1), whose embedding is exactly 0, so only
# the text contributes (HF `MoshiForCausalLM` likewise embeds text only).

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
        raise InvalidArgument(f"prompt_ids must be [B, T] with T >= 1, got {tuple(ids.shape)}")
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
