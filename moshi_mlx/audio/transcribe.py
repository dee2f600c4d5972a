"""Kyutai STT: speech in, words with timestamps out, as the audio streams (torch moshi `run_inference`).

Pipeline, as torch's for `model_type == "stt"`: the audio (mono, 24 kHz) gets `stt_config`'s
`audio_silence_prefix_seconds` of silence before it and `audio_delay_seconds + 1` after it; only whole
80 ms frames are used; each is Mimi-encoded and fed to `LmGen` (the first frame twice, as torch does,
so that it is not replaced by the initial tokens); the text tokens other than end-padding (0) and
padding (3) are the transcript, each piece's "▁" a space.

End of turn: with Kyutai STT's extra heads, head 2's first output is the probability that the
speaker's turn has ended (what Kyutai's examples read as `vad_heads[2][0, 0, 0]`, "end of turn" above
0.5); `Transcriber.turn_probability` keeps it per frame, dated like the text.

Timing: the STT model writes the text of the audio at time t about `audio_delay_seconds` later. A
text token produced for frame `n` of the padded stream (the frame the model had just heard) is dated
`n * 0.08 - prefix - delay` seconds into the input; a word starts at its first piece's date and ends
one frame after its last piece's date (clamped to the input's bounds).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import mlx.core as mx
import numpy as np

from ..errors import InvalidArgument
from ..generate import LmGen
from ..models.codec import FRAME_SIZE, MimiLike
from ..models.lm import Lm
from ..sampling import make_sampler
from ..tokenizer import Tokenizer
from .io import SAMPLE_RATE, read_audio

FRAME_SECONDS = FRAME_SIZE / SAMPLE_RATE
# Text tokens that are not text: end of padding (0) and padding (3) (`existing_text_*padding_id`).
SKIPPED = (0, 3)
END_OF_TURN_HEAD = 2  # Kyutai STT's extra head whose first output is P(end of turn)


@dataclass(frozen=True)
class Word:
    """One transcribed word and where it is in the input, in seconds."""

    text: str
    start: float
    end: float


def stt_settings(lm: Lm) -> tuple[float, float]:
    """(silence prefix, audio delay) in seconds from the model's `stt_config`; refuses other model types."""
    raw = lm.cfg.raw
    kind = raw.get("model_type", "moshi")
    if kind != "stt":
        hint = {"tts": "moshi-mlx speak", "hibiki": "moshi-mlx translate"}.get(kind, "moshi-mlx run")
        raise InvalidArgument(f"this is a {kind} model, not a speech-to-text one; use `{hint}`")
    stt = raw.get("stt_config") or {}
    return float(stt.get("audio_silence_prefix_seconds", 0.0)), float(stt.get("audio_delay_seconds", 0.0))


def padded_frames(pcm: np.ndarray, prefix: float, delay: float) -> Iterator[np.ndarray]:
    """The whole 80 ms frames of `pcm` with the STT padding: `prefix` s of silence before, `delay + 1` s after."""
    left, right = int(prefix * SAMPLE_RATE), int((delay + 1.0) * SAMPLE_RATE)
    padded = np.concatenate([np.zeros(left, np.float32), np.asarray(pcm, np.float32), np.zeros(right, np.float32)])
    for i in range(len(padded) // FRAME_SIZE):
        yield padded[i * FRAME_SIZE : (i + 1) * FRAME_SIZE]


class Transcriber:
    """Streams audio frames through Mimi and the STT `LmGen`; `tokens()` yields (frame, text token)."""

    def __init__(self, lm: Lm, mimi: MimiLike, tokenizer: Tokenizer, temp: float = 0.0, seed: int | None = None):
        self.prefix, self.delay = stt_settings(lm)
        if lm.cfg.dep_q:
            raise InvalidArgument("an STT model generates no audio (dep_q 0); this one has a depformer")
        self.lm, self.mimi, self.tokenizer = lm, mimi, tokenizer
        self.lm_gen = LmGen(lm, text_sampler=make_sampler(temp, 25 if temp else 0), batch_size=1, seed=seed)
        self.n_in = lm.cfg.n_q
        self.turn_probability: list[tuple[float, float]] = []  # (seconds into the input, P(end of turn))

    def tokens(self, frames: Iterable[np.ndarray]) -> Iterator[tuple[int, int]]:
        """(padded frame index, text token) for every step that returns a token, padding included."""
        self.lm_gen.reset()
        self.mimi.reset()
        self.turn_probability = []
        heads = self.lm.cfg.extra_heads_num_heads > END_OF_TURN_HEAD
        first, lag = True, self.lm.cfg.max_delay  # a token returned at frame n is frame n - max_delay's
        for n, frame in enumerate(frames):
            codes = self.mimi.encode_step(mx.array(frame)[None, None])[:, : self.n_in]
            if first:  # torch feeds the first frame twice (see the module docstring)
                self.lm_gen.step(codes)
                first = False
            out = self.lm_gen.step(codes)
            if out is not None:
                if heads:
                    p = float(self.lm_gen.extra_heads[END_OF_TURN_HEAD][0, 0])
                    self.turn_probability.append(((n - lag) * FRAME_SECONDS - self.prefix - self.delay, p))
                yield n - lag, int(np.array(out)[0, 0])

    def words(self, pcm: np.ndarray) -> Iterator[Word]:
        """The words of mono 24 kHz `pcm` as they are recognised."""
        yield from self._words(padded_frames(pcm, self.prefix, self.delay), lambda: len(pcm) / SAMPLE_RATE)

    def live_words(self, chunks: Iterable[np.ndarray]) -> Iterator[Word]:
        """The words of live audio (e.g. a microphone: mono 24 kHz chunks of any size) as they are
        recognised, padded as `words` pads a file: the same words and times for the same samples."""
        received = [0]  # samples so far: a word's times are clamped to the input heard when it is written

        def padded() -> Iterator[np.ndarray]:
            buffer = np.zeros(int(self.prefix * SAMPLE_RATE), np.float32)
            for chunk in chunks:
                chunk = np.asarray(chunk, np.float32).reshape(-1)
                received[0] += len(chunk)
                buffer = np.concatenate([buffer, chunk])
                while len(buffer) >= FRAME_SIZE:
                    yield buffer[:FRAME_SIZE]
                    buffer = buffer[FRAME_SIZE:]
            yield from padded_frames(buffer, 0.0, self.delay)

        yield from self._words(padded(), lambda: received[0] / SAMPLE_RATE)

    def _words(self, frames: Iterable[np.ndarray], duration: Callable[[], float]) -> Iterator[Word]:
        offset = self.prefix + self.delay
        current: list[str] = []
        start = last = 0.0

        def finish() -> Word:
            text = "".join(current).strip()
            heard = duration()
            return Word(text, round(max(0.0, min(start, heard)), 3),
                        round(max(0.0, min(last + FRAME_SECONDS, heard)), 3))

        for n, token in self.tokens(frames):
            if token in SKIPPED:
                continue
            piece = self.tokenizer.sp.id_to_piece(token).replace("▁", " ")
            t = n * FRAME_SECONDS - offset
            if piece.startswith(" ") and "".join(current).strip():
                yield finish()
                current = []
            if not "".join(current).strip():
                start = t
            current.append(piece)
            last = t
        if "".join(current).strip():
            yield finish()


def transcribe(
    source: str | Path | np.ndarray,
    model: Any = None,
    temp: float = 0.0,
    seed: int | None = None,
) -> Iterator[Word]:
    """Transcribes an audio file (or mono 24 kHz samples) with a Kyutai STT model, word by word.

    Args:
        source: an audio file (wav, mp3, ogg, flac) or a float32 array at 24 kHz.
        model: a `Pretrained` (from `load_pretrained`) or where to load one from (repo, folder).
        temp: text sampling temperature; 0 (default) is greedy, as Kyutai's STT examples.
        seed: random seed when sampling.

    Yields:
        `Word`s as the model emits them (about `audio_delay_seconds` behind the audio).
    """
    from ..weights.pretrained import Pretrained, load_pretrained

    pretrained = model if isinstance(model, Pretrained) else load_pretrained(model or "kyutai/stt-1b-en_fr")
    stt_settings(pretrained.lm)  # the model type is checked before any audio is read
    pcm = source if isinstance(source, np.ndarray) else read_audio(source)
    yield from Transcriber(pretrained.lm, pretrained.mimi, pretrained.tokenizer, temp, seed).words(pcm)


def turn_ends(probability: list[tuple[float, float]], threshold: float = 0.5) -> list[float]:
    """Times where P(end of turn) rises above `threshold` (from `Transcriber.turn_probability`)."""
    ends, above = [], False
    for t, p in probability:
        if p > threshold and not above:
            ends.append(round(max(t, 0.0), 3))
        above = p > threshold
    return ends


# --------------------------------------------------------------------------------------------------
# Output formats


def _clock(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def cues(words: list[Word], max_words: int = 8, max_gap: float = 1.0) -> list[list[Word]]:
    """Groups words into subtitle cues: at most `max_words`, split where a pause exceeds `max_gap` s."""
    out: list[list[Word]] = []
    for w in words:
        if out and len(out[-1]) < max_words and w.start - out[-1][-1].end <= max_gap:
            out[-1].append(w)
        else:
            out.append([w])
    return out


def format_words(words: list[Word], fmt: str, timestamps: bool = False, turn_ends: list[float] | None = None) -> str:
    """`words` as "text" (one line; with `timestamps`, each word followed by [start-end]), "srt", "vtt" or
    "json" (with `turn_ends`, the end-of-turn times, when the model has the heads)."""
    if fmt == "text":
        if timestamps:
            return " ".join(f"{w.text} [{w.start:.2f}-{w.end:.2f}]" for w in words) + "\n"
        return " ".join(w.text for w in words) + "\n"
    if fmt == "json":
        text = " ".join(w.text for w in words)
        data: dict[str, Any] = {"text": text, "words": [asdict(w) for w in words]}
        if turn_ends is not None:
            data["end_of_turn"] = turn_ends
        return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    if fmt in ("srt", "vtt"):
        sep = "," if fmt == "srt" else "."
        blocks = []
        for i, cue in enumerate(cues(words), 1):
            line = " ".join(w.text for w in cue)
            timing = f"{_clock(cue[0].start, sep)} --> {_clock(cue[-1].end, sep)}"
            blocks.append(f"{i}\n{timing}\n{line}\n" if fmt == "srt" else f"{timing}\n{line}\n")
        return ("WEBVTT\n\n" if fmt == "vtt" else "") + "\n".join(blocks)
    raise InvalidArgument(f"unknown format {fmt!r} (text, srt, vtt, json)")
