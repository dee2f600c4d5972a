"""Kyutai TTS (delayed streams modeling): the script, the word state machine and the voice condition,
with torch moshi's `models/tts.py` semantics.

The model writes padded text and audio together. Each step it samples a text token; the state
machine reads only whether that token is `new_word` (anything else counts as `pad`) and decides what
the model is fed instead: the next word's tokens one per step after a `new_word`, padding otherwise,
with padding budgets (`initial_padding` forced at the start, `max_padding` in a row at most, an
entry's own `padding` forced after it). With `second_stream_ahead` (the published model: 2) a second
text stream carries the tokens of the word that many entries ahead, muxed into one token as
`(second + 1) * card + first`. Sampling `new_word` with no entry left sets `end_step`.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import mlx.core as mx

from ..errors import InvalidArgument
from ..tokenizer import Tokenizer

MAX_SPEAKERS = 5  # speaker slots of the `speaker_wavs` condition (torch `TTSModel.max_speakers`)
FRAME_RATE = 12.5


@dataclass(frozen=True)
class TokenIds:
    """Special text tokens; `card` = text cardinality + 1 (the mux base)."""

    card: int
    new_word: int = 0
    pad: int = 3
    main: int = 1
    other: int = 2
    zero: int = -1


@dataclass
class Entry:
    """One word: its tokens, its text and the padding forced after it (a break has no tokens)."""

    tokens: list[int]
    text: str
    padding: int = 0


@dataclass
class State:
    """Where the machine is: entries left, padding budgets, tokens queued for both text streams."""

    entries: deque[Entry]
    remaining_padding: int
    forced_padding: int
    queued: deque[int] = field(default_factory=deque)
    lookahead_queued: deque[int] = field(default_factory=deque)
    end_step: int | None = None
    consumption_times: list[int] = field(default_factory=list)
    transcript: list[tuple[str, int]] = field(default_factory=list)

    def clone(self) -> State:
        """An independent copy (entries are never changed, only taken: the containers are copied)."""
        return State(deque(self.entries), self.remaining_padding, self.forced_padding, deque(self.queued),
                     deque(self.lookahead_queued), self.end_step, list(self.consumption_times), list(self.transcript))

    def tokens_ahead(self, lookahead: int) -> list[int]:
        """Tokens of the `lookahead`-th entry that has tokens (breaks skipped), [] when none."""
        for entry in self.entries:
            if entry.tokens:
                lookahead -= 1
                if lookahead == 0:
                    return entry.tokens
        return []


@dataclass(frozen=True)
class StateMachine:
    """torch `StateMachine`: turns the sampled text token into the token fed to the model."""

    token_ids: TokenIds
    second_stream_ahead: int = 0
    max_padding: int = 8
    initial_padding: int = 2

    def new_state(self, entries: Sequence[Entry]) -> State:
        return State(deque(entries), remaining_padding=self.initial_padding, forced_padding=self.initial_padding)

    def process(self, step: int, state: State, token: int) -> tuple[int, bool]:
        """Advances `state` for the sampled `token` at `step`; returns (token to feed, a word was consumed)."""
        ids = self.token_ids
        consumed = False
        if token != ids.new_word:
            token = ids.pad
        if state.queued or state.forced_padding > 0:
            token = ids.pad
        elif state.remaining_padding <= 0:
            token = ids.new_word

        if token == ids.new_word:
            if state.entries:
                entry = state.entries.popleft()
                state.consumption_times.append(step)
                consumed = True
                if entry.tokens:
                    state.transcript.append((entry.text, step))
                    state.queued.extend(entry.tokens)
                    if self.second_stream_ahead:
                        state.lookahead_queued.extend(state.tokens_ahead(self.second_stream_ahead))
                    state.remaining_padding = self.max_padding
                else:  # a break: counts as padding
                    token = ids.pad
                state.forced_padding = entry.padding
            else:  # past the last word: the end
                token = ids.new_word if self.second_stream_ahead and state.end_step is None else ids.pad
                if state.end_step is None:
                    state.end_step = step

        if token == ids.pad:
            state.remaining_padding = max(state.remaining_padding - 1, 0)
            state.forced_padding = max(state.forced_padding - 1, 0)
            output = state.queued.popleft() if state.queued else ids.pad
        else:
            output = ids.new_word

        if self.second_stream_ahead:
            second = -1
            if output == ids.new_word:  # `new_word` moves to the second stream; the word starts now
                second = ids.new_word
                output = state.queued.popleft() if state.queued else ids.pad
            elif state.lookahead_queued:
                second = state.lookahead_queued.popleft()
            output = (second + 1) * ids.card + output
        return output, consumed

    def choices(self, step: int, state: State) -> tuple[tuple[int, State], tuple[int, State]]:
        """Both outcomes of `process` at `step`: ((fed, state) if `pad` is sampled, (fed, state) if
        `new_word` is), so a compiled frame can pick one by the token it samples."""
        outcomes = []
        for token in (self.token_ids.pad, self.token_ids.new_word):
            s = state.clone()
            outcomes.append((self.process(step, s, token)[0], s))
        return outcomes[0], outcomes[1]


_EVENT = re.compile(r"(?:<break\s+time=\"([0-9]+(?:.[0-9]*)?)s\"\s*/?>)|(?:\s+)")


def script_to_entries(tokenizer: Tokenizer, token_ids: TokenIds, script: Sequence[str], multi_speaker: bool = True,
                      padding_between: int = 0, frame_rate: float = FRAME_RATE) -> list[Entry]:
    """The entries of `script` (one string per turn, the main speaker first), as torch `script_to_entries`:
    ':' and parentheses dropped, words split on whitespace, `<break time="0.5s"/>` a pause of that
    many frames, each turn's first word prefixed with its speaker token (multi-speaker models), at
    least `padding_between` steps of padding after each word."""
    speakers = [token_ids.main, token_ids.other]
    last_speaker = None
    entries: list[Entry] = []
    for idx, line in enumerate(script):
        first = True

        def add(word: str) -> None:
            nonlocal first, last_speaker
            tokens = tokenizer.encode(word)
            if first:
                speaker = idx % len(speakers)
                if multi_speaker and last_speaker != speaker:
                    last_speaker = speaker
                    tokens.insert(0, speakers[speaker])
                first = False
            padding = max(0, padding_between + len(tokens) - 1) if padding_between > 0 else 0
            entries.append(Entry(tokens, word, padding))

        line = line.replace("’", "'").replace(":", " ").replace("(", "").replace(")", "")
        while line:
            match = _EVENT.search(line)
            if match is None:
                break
            word, line = line[: match.start()], line[match.end():]
            if word:
                add(word)
            if match.group(1):
                entries.append(Entry([], "", int(round(float(match.group(1)) * frame_rate))))
        if line:
            add(line)
    return entries


@dataclass(frozen=True)
class TtsSettings:
    """A TTS checkpoint's settings (config.json `tts_config`, `model_id`, its conditioners)."""

    delay_steps: int  # frames the audio follows the text by (`audio_delay` seconds)
    second_stream_ahead: int
    multi_speaker: bool  # conditioned on `speaker_wavs` voice embeddings
    valid_cfg: tuple[float, ...]  # CFG-distilled models: the guidance values of the `cfg` condition
    voice_suffix: str  # kyutai/tts-voices file suffix for this model (".<sig>@<epoch>.safetensors")
    speaker_dim: int | None
    conditioners: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> TtsSettings:
        tts = raw.get("tts_config") or {}
        if tts.get("multistream"):
            raise InvalidArgument("multistream TTS models are not supported yet")
        if "audio_delay" not in tts:
            raise InvalidArgument("this model's config has no tts_config.audio_delay: not a Kyutai TTS model")
        conditioners = raw.get("conditioners") or {}
        cfg_values = ((conditioners.get("cfg") or {}).get("lut") or {}).get("possible_values") or []
        speaker = (conditioners.get("speaker_wavs") or {}).get("tensor") or {}
        model_id = raw.get("model_id") or {}
        suffix = f".{model_id['sig']}@{model_id['epoch']}.safetensors" if "sig" in model_id else ".safetensors"
        return cls(
            delay_steps=int(tts["audio_delay"] * FRAME_RATE),
            second_stream_ahead=int(tts.get("second_stream_ahead", 0)),
            multi_speaker="speaker_wavs" in conditioners,
            valid_cfg=tuple(sorted(float(v) for v in cfg_values)),
            voice_suffix=suffix,
            speaker_dim=speaker.get("dim"),
            conditioners=tuple(conditioners),
        )


def load_voice(path: str | Path) -> mx.array:
    """A kyutai/tts-voices embedding file -> `[1, T, dim]` (its `speaker_wavs` is `[1, dim, T]`)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InvalidArgument(f"{path}: a voice must be a .safetensors embedding file (kyutai/tts-voices)")
    if not path.is_file():
        raise InvalidArgument(f"{path}: voice file not found")
    try:
        emb = mx.load(str(path)).get("speaker_wavs")
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input
        raise InvalidArgument(f"{path}: cannot read the voice file ({e})") from e
    if emb is None or emb.ndim != 3 or emb.shape[0] != 1:
        raise InvalidArgument(f"{path}: expected a 'speaker_wavs' tensor [1, dim, T]")
    return emb.transpose(0, 2, 1).astype(mx.float32)


def condition_attributes(settings: TtsSettings, voices: Sequence[mx.array], cfg_coef: float | None) -> dict:
    """The model's condition values (torch `make_condition_attributes`): up to 5 voices `[1, T, dim]` in
    their speaker slots (the others masked), `control: "ok"`, and `cfg` as text for a CFG-distilled model."""
    attrs: dict[str, Any] = {}
    if "control" in settings.conditioners:
        attrs["control"] = "ok"
    if voices:
        if len(voices) > MAX_SPEAKERS:
            raise InvalidArgument(f"at most {MAX_SPEAKERS} voices, got {len(voices)}")
        T, dim = voices[0].shape[1], voices[0].shape[2]
        if settings.speaker_dim is not None and dim != settings.speaker_dim:
            raise InvalidArgument(f"the voice embedding has width {dim}, this model takes {settings.speaker_dim}")
        if any(v.shape != (1, T, dim) for v in voices):
            raise InvalidArgument("all voices must have the same shape")
        slots = list(voices) + [mx.zeros((1, T, dim))] * (MAX_SPEAKERS - len(voices))
        mask = mx.array([[i < len(voices)] * T for i in range(MAX_SPEAKERS)]).reshape(1, -1)
        attrs["speaker_wavs"] = (mx.concatenate(slots, axis=1), mask)
    elif settings.multi_speaker:
        attrs["speaker_wavs"] = None
    if "cfg" in settings.conditioners:
        if cfg_coef is None:
            attrs["cfg"] = None
        elif cfg_coef not in settings.valid_cfg:
            raise InvalidArgument(f"cfg_coef {cfg_coef} is not one this model was distilled for "
                                  f"({', '.join(str(v) for v in settings.valid_cfg)})")
        else:
            attrs["cfg"] = format(cfg_coef, ".1f")
    return attrs
