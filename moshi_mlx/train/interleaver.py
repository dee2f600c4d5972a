"""The text stream of a training window, built from word alignments as moshi-finetune's `Interleaver`.

Rules (kyutai-labs/moshi-finetune `finetune/data/interleaver.py`, with `train.py`'s settings as defaults):
- alignments `(word, (start, end), speaker)` are sorted by start; each word is tokenized alone
  (SentencePiece, no BOS; a newline inside a word becomes the newline piece);
- `keep_main_only` (moshi-finetune's default): only the main speaker's words (`SPEAKER_MAIN`) are kept;
  otherwise, with `use_bos_eos`, BOS is prepended to the main speaker's first word after any other
  speaker (or at the start) and EOS to another speaker's first word after the main speaker;
- words with `end <= start` are dropped; `audio_delay` shifts every word earlier by that many seconds
  and drops the words that end before it;
- the stream starts as PAD; at frame t every word with `start * frame_rate < t + 1` not yet placed
  starts (a later one replaces the unplaced tokens of an earlier one unless `keep_and_shift`); while
  tokens remain one is written per frame, and the frame before a word's first written token becomes
  EPAD if it held PAD; frames after a word's tokens up to `int(end * frame_rate)` hold the in-word
  padding (PAD);
- a negative `audio_delay` zero-pads (token -1) its first `int(frame_rate * -audio_delay)` frames.
Tokens that run past the window's last frame are cut.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol, Sequence

Alignment = tuple[str, tuple[float, float], str]
MAIN_SPEAKER = "SPEAKER_MAIN"


class WordTokenizer(Protocol):
    """What the interleaver needs from a tokenizer (`moshi_mlx.tokenizer.Tokenizer` has it)."""

    @property
    def bos_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...
    def encode(self, text: str, bos: bool = False) -> list[int]: ...


def tokenize_word(tokenizer: WordTokenizer, word: str) -> list[int]:
    """Tokens of one word (moshi-finetune `tokenize(..., bos=False)`): lines joined by the newline piece."""
    out: list[int] = []
    for i, line in enumerate(word.strip().split("\n")):
        if i:
            out.extend(tokenizer.encode("\n")[-1:])  # the newline piece (none if the vocabulary lacks one)
        out.extend(tokenizer.encode(line))
    return out


@dataclass
class Interleaver:
    """Builds `[T]` text token streams from alignments (see the module docstring)."""

    tokenizer: WordTokenizer
    frame_rate: float = 12.5
    text_padding: int = 3
    end_of_text_padding: int = 0
    zero_padding: int = -1
    in_word_padding: int | None = None
    keep_main_only: bool = True
    main_speaker: str = MAIN_SPEAKER
    use_bos_eos: bool = False
    keep_and_shift: bool = False
    audio_delay: float = 0.0

    def _prepare(self, alignments: Sequence[Alignment]) -> list[tuple[list[int], tuple[float, float], str]]:
        items = [
            (tokenize_word(self.tokenizer, w), (float(s), float(e)), spk)
            for w, (s, e), spk in sorted(alignments, key=lambda a: a[1][0])
        ]
        if self.keep_main_only:
            items = [a for a in items if a[2] == self.main_speaker]
        elif self.use_bos_eos:
            out, last = [], None
            for toks, ts, spk in items:
                if spk != last:
                    if spk == self.main_speaker:
                        toks = [self.tokenizer.bos_id, *toks]
                    elif last == self.main_speaker:
                        toks = [self.tokenizer.eos_id, *toks]
                last = spk
                out.append((toks, ts, spk))
            items = out
        items = [a for a in items if a[1][0] < a[1][1]]
        if self.audio_delay != 0:
            d = self.audio_delay
            items = [(t, (s - d, e - d), spk) for t, (s, e), spk in items if e > d]
        return items

    def stream(self, alignments: Sequence[Alignment] | None, num_frames: int) -> list[int]:
        """The text tokens of a `num_frames` window whose alignments are given in window time
        (None: no transcript, the whole stream is the zero token)."""
        if alignments is None:
            return [self.zero_padding] * num_frames
        in_word = self.text_padding if self.in_word_padding is None else self.in_word_padding
        words = self._prepare(alignments)
        tokens = [self.text_padding] * num_frames
        pending: deque[int] = deque()
        i, last_end = 0, -1
        for t in range(num_frames):
            while i < len(words) and words[i][1][0] * self.frame_rate < t + 1:
                last_end = int(words[i][1][1] * self.frame_rate)
                if self.keep_and_shift:
                    pending.extend(words[i][0])
                else:
                    pending = deque(words[i][0])
                i += 1
            if pending:
                if t > 0 and tokens[t - 1] in (self.text_padding, in_word):
                    tokens[t - 1] = self.end_of_text_padding
                tokens[t] = pending.popleft()
            elif t <= last_end:
                tokens[t] = in_word
        if self.audio_delay < 0:
            n = min(num_frames, int(self.frame_rate * -self.audio_delay))
            tokens[:n] = [self.zero_padding] * n
        return tokens


def window_alignments(alignments: Sequence[Alignment], start: float, duration: float) -> list[Alignment]:
    """The words that start in `[start, start + duration)`, in window time (moshi-finetune's `dicho` cut:
    a word that started before the window is not carried into it)."""
    out = []
    for word, (s, e), spk in sorted(alignments, key=lambda a: a[1][0]):
        if start <= s < start + duration:
            out.append((word, (s - start, e - start), spk))
    return out


def num_window_frames(duration_sec: float, frame_rate: float = 12.5) -> int:
    """Frames of a `duration_sec` window (`ceil`, as moshi-finetune's `InterleavedTokenizer`)."""
    return math.ceil(duration_sec * frame_rate)
