"""transformers-style API: `MoshiForConditionalGeneration.generate` and `MoshiForCausalLM`.

Both drive the same streaming code as the real-time apps (`LmGen.step`, `generate.stream_text`).

Sampling parameters mean what they mean in transformers' Moshi: the unprefixed `do_sample`,
`temperature`, `top_k`, `top_p` drive the TEXT tokens (the main decoder), and the
`depth_decoder_*` ones drive the AUDIO codebooks (the depth decoder). Defaults are those of the
published `kmhf/hf-moshiko` generation config, which are Kyutai's: text 0.7 / top-k 25, audio
0.8 / top-k 250, both sampled (`moshi_mlx.sampling.TEXT_DEFAULTS`, `AUDIO_DEFAULTS`). As in
transformers, `do_sample=False` alone makes only the text greedy; pass
`depth_decoder_do_sample=False` too for fully greedy decoding.

Alignment of a prompt follows transformers (and training): frame f of `input_ids`,
`moshi_audio_codes` and `user_audio_codes` describe the same 80 ms. With `LmGen`'s torch
semantics (a user frame is fed in the step it arrives, as frame `step - 1`), user frame f is
therefore passed at step f + 1, and Moshi's own prompt tokens are teacher-forced at the steps
that would sample them. Once the user prompt runs out, the user stream is silence: like
transformers, the codes of one frame (`FRAME_SIZE` samples) of zeros encoded by the Mimi codec
(`user_silence_codes` overrides this, e.g. when no codec is attached).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from .errors import InvalidArgument
from .generate import LmGen, generate_text
from .models.codec import FRAME_SIZE, MimiLike
from .models.lm import Lm
from .sampling import AUDIO_DEFAULTS, TEXT_DEFAULTS, Sampler, make_sampler
from .tokenizer import Tokenizer

__all__ = ["FRAME_SIZE", "GenerateOutput", "MoshiForCausalLM", "MoshiForConditionalGeneration"]


@dataclass
class GenerateOutput:
    """What `generate` returns (transformers `MoshiConditionalGenerationGenerateOutput`)."""

    sequences: mx.array  # [B, P + N] text ids: the prompt's frames, then generated ones
    audio_codes: mx.array  # [B, dep_q, P + N] Moshi's audio codes, aligned with `sequences`
    audio_sequences: mx.array | None = None  # [B, 1, (P + N) * FRAME_SIZE] waveform (needs a Mimi)


def _mimi_encode(mimi: MimiLike, pcm: np.ndarray) -> np.ndarray:
    """Codes `[B, K, T]` of float32 audio `[B, 1, S]` (every `MimiLike` takes mx arrays)."""
    return np.asarray(mimi.encode(mx.array(pcm))).astype(np.int64)


def _mimi_decode(mimi: MimiLike, codes: mx.array) -> mx.array:
    pcm = mimi.decode(codes.astype(mx.int32))
    return pcm if isinstance(pcm, mx.array) else mx.array(np.asarray(pcm, dtype=np.float32))


def _pad_to_frames(pcm: np.ndarray) -> np.ndarray:
    pcm = np.asarray(pcm, dtype=np.float32)
    if pcm.ndim != 3 or pcm.shape[1] != 1:
        raise InvalidArgument(f"audio input values must be [B, 1, samples], got {pcm.shape}")
    extra = -pcm.shape[-1] % FRAME_SIZE
    return np.pad(pcm, ((0, 0), (0, 0), (0, extra))) if extra else pcm


def _sampler(do_sample: bool, temperature: float, top_k: int, top_p: float) -> Sampler:
    """transformers' rule: without `do_sample`, greedy whatever the other parameters say."""
    return make_sampler(temperature, top_k, top_p) if do_sample else make_sampler(0.0)


class MoshiForConditionalGeneration:
    """Moshi LM + optional Mimi codec with transformers' `generate` signature."""

    def __init__(self, lm: Lm, mimi: MimiLike | None = None):
        self.lm = lm
        self.mimi = mimi

    @property
    def num_user_codebooks(self) -> int:
        return self.lm.cfg.n_q - self.lm.cfg.dep_q

    def get_unconditional_inputs(self, num_samples: int = 1) -> dict[str, mx.array]:
        """One frame of initial tokens per sample (transformers `get_unconditional_inputs`)."""
        cfg = self.lm.cfg
        return dict(
            input_ids=mx.full((num_samples, 1), cfg.text_initial_token_id, mx.int32),
            user_audio_codes=mx.full((num_samples, self.num_user_codebooks, 1), cfg.initial_token_id, mx.int32),
            moshi_audio_codes=mx.full((num_samples, cfg.dep_q, 1), cfg.initial_token_id, mx.int32),
        )

    def _codes(self, codes: Any, values: Any, count: int, name: str) -> np.ndarray | None:
        if codes is not None:
            arr = np.asarray(codes).astype(np.int64)
        elif values is not None:
            if self.mimi is None:
                raise InvalidArgument(f"{name}_input_values needs a Mimi codec; pass {name}_audio_codes instead")
            arr = _mimi_encode(self.mimi, _pad_to_frames(np.asarray(values)))
        else:
            return None
        if arr.ndim != 3 or arr.shape[1] < count:
            raise InvalidArgument(f"{name} audio codes must be [B, >={count}, T], got {arr.shape}")
        return arr[:, :count]

    def silence_codes(self, batch_size: int) -> np.ndarray:
        """User codes `[B, n_user]` of one frame of silence, encoded by the attached Mimi."""
        if self.mimi is None:
            raise InvalidArgument("the user stream needs silence codes: attach a Mimi or pass user_silence_codes")
        pcm = np.zeros((batch_size, 1, FRAME_SIZE), dtype=np.float32)
        return _mimi_encode(self.mimi, pcm)[:, : self.num_user_codebooks, 0]

    def generate(
        self,
        input_ids: Any = None,
        user_audio_codes: Any = None,
        user_input_values: Any = None,
        moshi_audio_codes: Any = None,
        moshi_input_values: Any = None,
        max_new_tokens: int = 50,
        do_sample: bool = True,
        temperature: float = TEXT_DEFAULTS["temp"],
        top_k: int = TEXT_DEFAULTS["top_k"],
        top_p: float = 1.0,
        depth_decoder_do_sample: bool = True,
        depth_decoder_temperature: float = AUDIO_DEFAULTS["temp"],
        depth_decoder_top_k: int = AUDIO_DEFAULTS["top_k"],
        depth_decoder_top_p: float = 1.0,
        seed: int | None = None,
        user_silence_codes: Any = None,
        return_audio_waveforms: bool = True,
    ) -> GenerateOutput:
        """Continues a (text, Moshi audio, user audio) prompt by `max_new_tokens` frames.

        Args:
            input_ids: ``[B, P]`` text prompt.
            user_audio_codes: ``[B, n_q - dep_q, P]`` user audio codes (or ``user_input_values``
                ``[B, 1, samples]`` at 24 kHz, encoded with the attached Mimi).
            moshi_audio_codes: ``[B, dep_q, P]`` Moshi audio codes (or ``moshi_input_values``).
            max_new_tokens: Frames (text tokens) to generate after the prompt.
            do_sample: Sample the text tokens (``True``) or take the most likely one.
            temperature, top_k, top_p: Text sampling (defaults 0.7, 25, 1.0 = no nucleus filter).
            depth_decoder_do_sample: Sample the audio codebooks (``True``) or take the most likely.
            depth_decoder_temperature, depth_decoder_top_k, depth_decoder_top_p: Audio sampling
                (defaults 0.8, 250, 1.0).
            seed: Seed of the generator's own random key (reproducible); None uses the
                global ``mx.random`` state.
            user_silence_codes: ``[n_q - dep_q]`` or ``[B, n_q - dep_q]`` codes for the user
                stream after the prompt; default: the Mimi encoding of one silent frame.
            return_audio_waveforms: Decode ``audio_codes`` with the Mimi (when attached).

        Returns:
            A ``GenerateOutput``; with no prompt at all, generation starts from the initial
            tokens alone (P = 0).
        """
        cfg = self.lm.cfg
        text = None if input_ids is None else np.asarray(input_ids).astype(np.int64)
        user = self._codes(user_audio_codes, user_input_values, self.num_user_codebooks, "user")
        moshi = self._codes(moshi_audio_codes, moshi_input_values, cfg.dep_q, "moshi")
        given = [x is not None for x in (text, user, moshi)]
        if any(given) and not all(given):
            raise InvalidArgument("pass all three prompts (input_ids, user audio, moshi audio) or none of them")
        if all(given):
            if text.ndim != 2:
                raise InvalidArgument(f"input_ids must be [B, P], got {text.shape}")
            frames = {text.shape[1], user.shape[2], moshi.shape[2]}
            if len(frames) != 1:
                raise InvalidArgument(
                    f"prompt streams differ in length: input_ids {text.shape[1]}, user audio "
                    f"{user.shape[2]}, moshi audio {moshi.shape[2]} frames"
                )
            B, P = text.shape
            if user.shape[0] != B or moshi.shape[0] != B:
                raise InvalidArgument("prompt streams differ in batch size")
        else:
            B, P = 1, 0
        if max_new_tokens < 0:
            raise InvalidArgument(f"max_new_tokens must be >= 0, got {max_new_tokens}")

        silence = self.silence_codes(B) if user_silence_codes is None else np.asarray(user_silence_codes)
        silence = np.broadcast_to(silence.astype(np.int64), (B, self.num_user_codebooks))
        prompt = None
        if P:
            prompt = np.concatenate([text[:, None], moshi], axis=1)  # [B, 1 + dep_q, P]

        text_sampler = _sampler(do_sample, temperature, top_k, top_p)
        audio_sampler = _sampler(depth_decoder_do_sample, depth_decoder_temperature, depth_decoder_top_k, depth_decoder_top_p)
        gen = LmGen(self.lm, text_sampler, audio_sampler, batch_size=B, seed=seed)
        total = P + max_new_tokens
        delays = np.array(cfg.delays[: 1 + cfg.dep_q])
        frames_out: list[mx.array] = []
        for step in range(total + cfg.max_delay):
            f_user = step - 1  # the user frame LmGen treats as simultaneous with this step
            user_frame = user[:, :, f_user] if 0 <= f_user < P else silence
            force = None
            own = step - delays  # frame each generated stream samples at this step
            if prompt is not None and ((own >= 0) & (own < P)).any():
                forced = np.full((B, 1 + cfg.dep_q), cfg.ungenerated_token_id, dtype=np.int64)
                for k, f in enumerate(own):
                    if 0 <= f < P:
                        forced[:, k] = prompt[:, k, f]
                force = mx.array(forced.astype(np.int32))
            out = gen.step(mx.array(user_frame.astype(np.int32)), force)
            if out is not None and len(frames_out) < total:
                frames_out.append(out)
        tokens = mx.stack(frames_out, axis=2) if frames_out else mx.zeros((B, 1 + cfg.dep_q, 0), mx.int32)
        audio_codes = tokens[:, 1:]
        waveform = None
        if return_audio_waveforms and self.mimi is not None and total > 0:
            waveform = _mimi_decode(self.mimi, audio_codes)
        return GenerateOutput(tokens[:, 0], audio_codes, waveform)


class MoshiForCausalLM:
    """Text-only generation with the LM's text stream (Helium), transformers-style."""

    def __init__(self, lm: Lm, tokenizer: Tokenizer | None = None):
        self.lm = lm
        self.tokenizer = tokenizer

    def generate(
        self,
        input_ids: Any = None,
        prompt: str | None = None,
        max_new_tokens: int = 50,
        do_sample: bool = True,
        temperature: float = TEXT_DEFAULTS["temp"],
        top_k: int = TEXT_DEFAULTS["top_k"],
        top_p: float = 1.0,
        seed: int | None = None,
        eos_token_id: int | None = None,
    ) -> mx.array:
        """Prompt ids ``[B, T]`` (or a `prompt` string, encoded with BOS) continued by up to
        `max_new_tokens` tokens; returns ``[B, T + N]`` ids.

        Sampling as transformers with the published generation config: `do_sample` with
        temperature 0.7 and top-k 25 (Kyutai's text defaults); ``do_sample=False`` is greedy.
        """
        if (input_ids is None) == (prompt is None):
            raise InvalidArgument("pass exactly one of input_ids or prompt")
        if prompt is not None:
            if self.tokenizer is None:
                raise InvalidArgument("a string prompt needs a tokenizer")
            input_ids = [self.tokenizer.encode(prompt, bos=True)]
        sampler = _sampler(do_sample, temperature, top_k, top_p)
        return generate_text(self.lm, input_ids, max_new_tokens, sampler, seed, eos_token_id)
