"""Hibiki: speech in one language in, its translation out (voice and text), as torch moshi's
`run_inference` does for `model_type == "hibiki"`.

The model is conditioned on `description = "very_good"`; with classifier-free guidance
(`cfg_coef != 1`, Kyutai's default from `lm_gen_config`) the contrast rows get "very_bad". The input's
whole 80 ms frames are Mimi-encoded and fed to `LmGen` (the first frame twice, as torch); after the
last one, one frame of end-of-stream codes (every codebook = the codec's cardinality), then silence,
until the model writes the text EOS. An EOS written before the input ends is ignored (torch warns).
torch waits for the EOS without limit; we stop after `max_tail_seconds` of silence at most.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ..errors import InvalidArgument
from ..generate import LmGen
from ..models.codec import FRAME_SIZE, MimiLike
from ..models.lm import Lm
from ..sampling import SamplingParams
from ..tokenizer import Tokenizer
from .io import read_audio

GOOD, BAD = "very_good", "very_bad"


@dataclass(frozen=True)
class TranslatedFrame:
    """One step's output: the text token, its text ('' for padding) and 80 ms of translated voice."""

    token: int
    text: str
    pcm: np.ndarray


def hibiki_cfg_coef(lm: Lm) -> float:
    """The guidance Kyutai ships with the model (`lm_gen_config.cfg_coef`), 1 when none."""
    return float((lm.cfg.raw.get("lm_gen_config") or {}).get("cfg_coef", 1.0))


def check_hibiki(lm: Lm) -> None:
    kind = lm.cfg.raw.get("model_type", "moshi")
    if kind != "hibiki":
        hint = {"stt": "moshi-mlx transcribe", "tts": "moshi-mlx speak"}.get(kind, "moshi-mlx run")
        raise InvalidArgument(f"this is a {kind} model, not a Hibiki translation one; use `{hint}`")


class Translator:
    """Streams audio through Mimi, the conditioned `LmGen` (with CFG) and back through Mimi."""

    def __init__(self, lm: Lm, mimi: MimiLike, tokenizer: Tokenizer, sampling: SamplingParams | None = None,
                 cfg_coef: float | None = None, max_tail_seconds: float = 30.0):
        check_hibiki(lm)
        self.lm, self.mimi, self.tokenizer = lm, mimi, tokenizer
        self.cfg_coef = hibiki_cfg_coef(lm) if cfg_coef is None else float(cfg_coef)
        items = [{"description": GOOD}] + ([{"description": BAD}] if self.cfg_coef != 1.0 else [])
        sampling = sampling or SamplingParams()
        self.lm_gen = LmGen(lm, sampling.text_sampler(), sampling.audio_sampler(), seed=sampling.seed,
                            conditions=lm.conditions(items), cfg_coef=self.cfg_coef)
        self.max_tail = int(round(max_tail_seconds * 12.5))
        self.eos = tokenizer.eos_id

    def frames(self, pcm: np.ndarray) -> Iterator[TranslatedFrame]:
        """The translation of mono 24 kHz `pcm`, frame by frame."""
        self.lm_gen.reset()
        self.mimi.reset()
        n_in = self.lm.cfg.n_q - self.lm.cfg.dep_q
        card = self.lm.cfg.card
        chunks = [pcm[i * FRAME_SIZE : (i + 1) * FRAME_SIZE] for i in range(len(pcm) // FRAME_SIZE)]
        silence = np.zeros(FRAME_SIZE, np.float32)
        first, tail = True, 0
        while True:
            if chunks:
                codes = self.mimi.encode_step(mx.array(chunks.pop(0))[None, None])[:, :n_in]
            elif tail == 0:
                codes = mx.full((1, n_in, 1), card, dtype=mx.int32)  # end of the input stream
                tail = 1
            elif tail > self.max_tail:
                return
            else:
                codes = self.mimi.encode_step(mx.array(silence)[None, None])[:, :n_in]
                tail += 1
            if first:
                self.lm_gen.step(codes)
                first = False
            out = self.lm_gen.step(codes)
            if out is None:
                continue
            token = int(np.array(out)[0, 0])
            pcm_out = np.array(self.mimi.decode_step(out[:, 1:, None])).reshape(-1)
            text = "" if token in (0, 3, self.eos) else self.tokenizer.sp.id_to_piece(token).replace("▁", " ")
            yield TranslatedFrame(token, text, pcm_out)
            if token == self.eos and tail:
                return


def translate(source: str | Path | np.ndarray, model: Any = None, **kwargs: Any) -> Iterator[TranslatedFrame]:
    """Translates an audio file (or mono 24 kHz samples) with a Hibiki model, frame by frame.

    Args:
        source: an audio file or a float32 array at 24 kHz.
        model: a `Pretrained` (from `load_pretrained`) or where to load one from (repo, folder).
        **kwargs: `Translator` options (`sampling`, `cfg_coef`, `max_tail_seconds`).
    """
    from ..weights.pretrained import Pretrained, load_pretrained

    pretrained = model if isinstance(model, Pretrained) else load_pretrained(model or "kyutai/hibiki-1b-pytorch-bf16")
    check_hibiki(pretrained.lm)
    pcm = source if isinstance(source, np.ndarray) else read_audio(source)
    yield from Translator(pretrained.lm, pretrained.mimi, pretrained.tokenizer, **kwargs).frames(pcm)
