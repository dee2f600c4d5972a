"""Generation: `LmGen`, Moshi's streaming step (delays, initial tokens, text and audio samplers),
and text-only generation (`stream_text`, `generate_text`: Helium, or Moshi's text stream alone).

Follows torch moshi `LMGen` semantics exactly: the user frame given at step `o` is written
`delay` positions ahead in a small token ring and fed to the model in the same step (for
delay-0 codebooks); sampled text/audio tokens are fed back one step later; the frame
returned at step `o` is frame `o - max_delay` of every generated stream, text aligned with
its audio; the first `max_delay` steps return None.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator

import os
from dataclasses import replace
from functools import partial

import mlx.core as mx

from .errors import InvalidArgument
from .models.conditioners import Condition
from .models.frame import (
    FrameSpec, depth_stage, empty_kv, frame_stages, is_lean, kv_buffers_per_layer, kv_dtype,
    supports_compiled_frame, temporal_stage,
)
from .models.products import cpu_cores, lay_out_for_cpu_blas, transposed_linear
from .models.lm import Lm
from .modules.attention import rope_product_is_exact
from .modules.kv_cache import bucket_size, grow_buffers
from .sampling import AUDIO_DEFAULTS, TEXT_DEFAULTS, Sampler, make_sampler

if TYPE_CHECKING:
    import numpy as np

COMPILE_ENV = "MOSHI_MLX_COMPILE"  # "0": run the frame op by op (debugging)


class LmGen:
    """Streaming generator over an `Lm`; holds its own KV buffers, token ring and random key.

    Each step runs one frame as a few compiled graphs (`models.frame.frame_stages`), each built
    while the previous one runs; the KV buffers are updated in place. With
    `compiled=False` (or env `MOSHI_MLX_COMPILE=0`) the same functions run op by op, for debugging.
    Memory is bounded when the model config has a `context` (ring of `context` positions), so a
    conversation can run for any number of steps. The weights are read when the frame graph is
    built, at the first step after `reset()`: call `reset()` after changing them.
    """

    def __init__(
        self,
        lm: Lm,
        text_sampler: Sampler | None = None,
        audio_sampler: Sampler | None = None,
        batch_size: int = 1,
        seed: int | None = None,
        key: mx.array | None = None,
        compiled: bool | None = None,
        conditions: dict[str, Condition] | None = None,
        cfg_coef: float = 1.0,
        text_choice: int | None = None,
    ):
        """`conditions`: a conditioned model's condition tensors (`lm.conditions(...)`), for `batch_size`
        rows, or `2 * batch_size` with `cfg_coef != 1` (classifier-free guidance, as torch `LMGen`:
        rows B.. are the contrast, e.g. `null_attributes` or Hibiki's "very_bad").
        `text_choice`: a text token whose sampling selects `step`'s `text_if_choice` (TTS's state
        machine, see `models.tts`); `sampled_text` then holds each step's drawn text `[B]`."""
        cfg = lm.cfg
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
        self.lm = lm
        self.text_sampler = text_sampler or make_sampler(**TEXT_DEFAULTS)
        self.audio_sampler = audio_sampler or make_sampler(**AUDIO_DEFAULTS)
        self.batch_size = batch_size
        self.num_user_codebooks = cfg.n_q - cfg.dep_q
        self._seed_key = key if key is not None else (mx.random.key(seed) if seed is not None else None)
        if compiled is None:
            compiled = os.environ.get(COMPILE_ENV, "1") != "0"
        unsupported = supports_compiled_frame(lm)
        if unsupported is not None:
            raise InvalidArgument(f"LmGen cannot stream this model: {unsupported}")
        self.compiled = compiled
        self.cfg_coef = float(cfg_coef)
        sum_condition, cross = _check_conditions(lm, conditions, batch_size, self.cfg_coef)
        cross_kv = None
        if cross is not None:  # the source's keys/values, once: constants of the frame graph
            cross_kv = tuple(layer.cross_attention.source_kv(cross) for layer in lm.transformer.layers)
            mx.eval(cross_kv)
        # Ring of max_delay + 2 token columns (torch `_LMGenState.cache`): enough for writes
        # up to max_delay steps ahead of the read position and reads max_delay behind.
        self._spec = FrameSpec(lm, self.text_sampler, self.audio_sampler, cfg.max_delay + 2,
                               sum_condition=sum_condition, cfg_coef=self.cfg_coef, cross_kv=cross_kv,
                               text_choice=text_choice)
        self.sampled_text: mx.array | None = None
        tcfg = cfg.transformer
        self._capacity = tcfg.context  # a ring of `context` positions; None: grows with the stream
        rows = batch_size * (2 if self.cfg_coef != 1.0 else 1)  # CFG runs the model on 2B rows
        self._kv_rows = rows
        self.extra_heads: list[mx.array] = []  # the last step's extra-head probabilities
        self._no_force = mx.full((batch_size, 1 + cfg.dep_q), cfg.ungenerated_token_id, dtype=mx.int32)
        self.reset()

    def reset(self) -> None:
        """Starts a new conversation: empty KV buffers, token ring and a fresh random key; the frame
        graph is rebuilt (so it reads the current weights). On the CPU, fp32 projections are laid
        out for its BLAS first, same values, and large products are split across its cores
        (`models.products`); RoPE is one matrix product where that product is exact."""
        cfg = self.lm.cfg
        self.tokens = mx.full(
            (self.batch_size, cfg.num_codebooks, self._spec.ring), cfg.ungenerated_token_id, mx.int32
        )
        self.kv = empty_kv(self._spec, self._kv_rows, kv_dtype(self.lm))
        self.offset = 0
        if self._seed_key is not None:
            self.key = self._seed_key
        else:  # drawn from the global random state: `mx.random.seed` still makes a run reproducible
            self.key = mx.random.randint(0, 2**31 - 1, (2,)).astype(mx.uint32)
        rope_product = False
        if is_lean(self._spec):
            linear = transposed_linear(self.lm, parts=cpu_cores(), whole=lay_out_for_cpu_blas(self.lm))
            tcfg = cfg.transformer
            rope_product = tcfg.positional_embedding == "rope" and rope_product_is_exact(
                tcfg.head_dim, tcfg.max_period, tcfg.num_heads, tcfg.num_kv_heads
            )
        else:
            linear = transposed_linear(self.lm)
        self._spec = replace(self._spec, linear=linear, rope_product=rope_product)
        self._stage_fns: dict[tuple[bool, bool], tuple] = {}  # by (masked, forcing)

    def _stages(self, masked: bool, forcing: bool) -> tuple[list[tuple[range, Callable]], list[tuple[range, Callable]]]:
        """The frame's stages (`models.frame.frame_stages`), each with its function (compiled unless
        `compiled=False`), for a partly filled KV buffer (`masked`) or a full one, with or without
        forced tokens; built on first use."""
        stages = self._stage_fns.get((masked, forcing))
        if stages is None:
            spec, wrap = self._spec, (mx.compile if self.compiled else (lambda fn: fn))
            temporal, depth = frame_stages(spec)
            stages = self._stage_fns[masked, forcing] = (
                [(layers, wrap(partial(temporal_stage, spec, layers))) for layers in temporal],
                [(steps, wrap(partial(depth_stage, spec, steps))) for steps in depth],
            )
        return stages

    @property
    def kv_nbytes(self) -> int:
        """Bytes held by the temporal KV buffers."""
        return sum(a.nbytes for a in self.kv)

    def _user_tokens(self, user_codes: mx.array | np.ndarray) -> mx.array:
        codes = mx.array(user_codes).astype(mx.int32) if not isinstance(user_codes, mx.array) else user_codes
        if codes.ndim == 3:
            codes = codes[:, :, 0] if codes.shape[2] == 1 else codes
        B, n = self.batch_size, self.num_user_codebooks
        if codes.ndim != 2 or codes.shape[0] != B or codes.shape[1] < n:
            raise InvalidArgument(f"user codes must be [{B}, >={n}] or [{B}, >={n}, 1], got {tuple(codes.shape)}")
        return codes[:, :n].astype(mx.int32)

    def _buffers_for(self, step: int) -> tuple[int, int | None]:
        """Grows the KV buffers to hold step `step` (at a bucket size); returns its slot and the
        number of slots filled after it (None when every slot holds a key)."""
        cap = self._capacity
        size = self.kv[0].shape[2]
        if cap is None or step < cap:
            needed = bucket_size(step + 1, cap)
            if needed > size:
                grow_buffers(self.kv, needed)
                size = needed
        slot = step if cap is None else step % cap
        filled = step + 1 if cap is None else min(step + 1, cap)
        return slot, (None if filled == size else filled)

    def step_with_extra_heads(
        self, user_codes: mx.array | np.ndarray, force_tokens: mx.array | None = None
    ) -> tuple[mx.array, list[mx.array]] | None:
        """`step`, plus the extra heads' probabilities of this step (torch `step_with_extra_heads`:
        softmax over each head, `[B, extra_heads_dim]`, `[2B, ...]` under CFG); None while `step` is."""
        out = self.step(user_codes, force_tokens)
        return None if out is None else (out, self.extra_heads)

    def step(
        self, user_codes: mx.array | np.ndarray, force_tokens: mx.array | None = None,
        text_if_choice: mx.array | None = None,
    ) -> mx.array | None:
        """Runs one 80 ms frame.

        Args:
            user_codes: The user's audio codes for this frame, ``[B, n_q - dep_q]`` or
                ``[B, n_q - dep_q, 1]`` (extra codebooks are ignored).
            force_tokens: Optional ``[B, 1 + dep_q]`` tokens replacing what this step would
                sample (teacher forcing, e.g. a prompt); entries equal to
                ``ungenerated_token_id`` (-2) are sampled as usual.
            text_if_choice: With `text_choice`, ``[B]`` text forced instead of ``force_tokens[:, 0]``
                on the rows where the sampler draws `text_choice`.

        Returns:
            Int32 tokens ``[B, 1 + dep_q]`` (text, then Moshi's audio codebooks) of frame
            ``step - max_delay``, or None during the first ``max_delay`` steps. Evaluation is
            scheduled (``mx.async_eval``); reading the result waits for it.
        """
        user = self._user_tokens(user_codes)
        forced = None if force_tokens is None else mx.array(force_tokens).astype(mx.int32)
        if self._spec.text_choice is not None:
            forced = self._no_force if forced is None else forced
            alt = forced[:, :1] if text_if_choice is None else mx.array(text_if_choice).astype(mx.int32)[:, None]
            forced = mx.concatenate([forced, alt], axis=1)
        o = self.offset
        slot, filled = self._buffers_for(o)
        step, at = mx.array(o, dtype=mx.int32), mx.array([slot], dtype=mx.int32)
        temporal, depth = self._stages(filled is not None, forced is not None)
        previous = self.tokens  # the token ring as the previous frame left it: its last output
        carry: dict = {"tokens": previous, "key": self.key, "user": user, "forced": forced,
                       "filled": None if filled is None else mx.array(filled, dtype=mx.int32)}
        # Each stage's graph holds the only references to its old KV buffers, so that their slice
        # updates write in place (a buffer referenced elsewhere is copied whole, every step): the
        # list `self.kv` lets go of a stage's buffers while the stage is built, then takes its new ones.
        kv, per = self.kv, kv_buffers_per_layer(self._spec, self.kv)
        for i, (layers, stage) in enumerate(temporal):
            span = slice(per * layers.start, per * layers.stop)
            chunk, kv[span] = kv[span], [None] * (span.stop - span.start)
            try:
                carry, new = stage(carry, chunk, step, at)
            except BaseException:
                kv[span] = chunk
                raise
            del chunk
            kv[span] = new
            if i == 0:
                # A caller that does not read every frame's tokens (`generate`) would run frames
                # ahead, and the previous frame's kernels, still queued, would hold the KV buffers:
                # this frame's updates would then copy them whole. So that frame is finished first
                # (at once for a caller that read its tokens); this stage's graph was built meanwhile.
                mx.eval(previous)
                del previous
            mx.async_eval(carry, new)  # runs while the next stage's graph is built
        key, extra = carry.pop("key"), carry.pop("extra")
        for _, stage in depth:
            carry = stage(carry, step)
            mx.async_eval(carry)
        self.tokens, out, self.key = carry["tokens"], carry["out"], key
        self.offset = o + 1
        if self._spec.text_choice is not None:
            *extra, self.sampled_text = extra
        self.extra_heads = extra
        return None if self.offset <= self.lm.cfg.max_delay else out


def _check_conditions(
    lm: Lm, conditions: dict[str, Condition] | None, batch_size: int, cfg_coef: float
) -> tuple[mx.array | None, mx.array | None]:
    """(`[B', 1, D]` sum condition, `[B', S, D]` cross-attention source) of `conditions`, checked
    against the model and the batch."""
    if cfg_coef != 1.0 and lm.fuser is None:
        raise InvalidArgument("cfg_coef != 1 needs a conditioned model (this one has no conditions to contrast)")
    sum_condition, cross = lm.fuse(conditions)
    rows = batch_size * (2 if cfg_coef != 1.0 else 1)
    for c in (sum_condition, cross):
        if c is not None and c.shape[0] != rows:
            raise InvalidArgument(
                f"the conditions have {c.shape[0]} rows, expected {rows}"
                + (" (classifier-free guidance takes the conditioned rows, then the contrast rows)" if cfg_coef != 1.0 else "")
            )
    return sum_condition, cross


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
    import numpy as np  # here only: streaming (`LmGen`) does not load numpy

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
