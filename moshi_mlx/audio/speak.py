"""Kyutai TTS: text to speech, streamed, as torch moshi's `TTSModel.generate` and `run_tts` do.

Each step the LM samples a text token; the word state machine (`models.tts`) turns it into the token
the model is fed, inside the compiled frame: both of the machine's possible answers go in, the frame
picks one by what it sampled (`LmGen(text_choice=new_word)`). Audio is delayed `delay_steps` frames
behind the text: before that the audio tokens are the zero token (torch's `on_audio_hook` and
`depformer_replace_tokens`), and Mimi decodes frames from `delay_steps` on, 80 ms at a time, while
the model goes on. Generation ends `delay_steps + final_padding` frames after the script's end.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ..errors import InvalidArgument
from ..generate import LmGen
from ..models.codec import MimiLike, RustMimi
from ..models.lm import Lm
from ..models.tts import (Entry, State, StateMachine, TokenIds, TtsSettings, condition_attributes, load_voice,
                          script_to_entries)
from ..sampling import make_sampler
from ..tokenizer import Tokenizer
from ..weights.model_type import wrong_type

VOICE_REPO = "kyutai/tts-voices"
DEFAULT_TTS = "kyutai/tts-1.6b-en_fr"


@dataclass(frozen=True)
class TtsStep:
    """One LM step: the text token sampled and the one fed, per row, and the frame `step - max_delay`
    (`[B, 1 + dep_q]`, text then audio; None in the first `max_delay` steps)."""

    step: int
    sampled: list[int]
    fed: list[int]
    frame: mx.array | None


def check_tts(lm: Lm) -> TtsSettings:
    """The TTS settings of `lm`, or a one-line error naming the command for its kind."""
    kind = str(lm.cfg.raw.get("model_type", "moshi"))
    if kind != "tts":
        raise InvalidArgument(wrong_type(kind))
    return TtsSettings.from_config(lm.cfg.raw)


def voice_path(voice: str | Path, settings: TtsSettings, repo: str = VOICE_REPO) -> Path:
    """A local `.safetensors` voice file as is; otherwise `voice` + the model's suffix in `repo`
    (e.g. "expresso/ex03-ex01_happy_001_channel1_334s.wav"), fetched once then cached."""
    path = Path(voice)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise InvalidArgument(f"{path}: voice file not found")
        return path
    name = str(voice) + settings.voice_suffix
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, name))
    except Exception as e:  # noqa: BLE001 - offline, missing file, bad repo: one line for all
        raise InvalidArgument(f"voice {str(voice)!r}: cannot get {name} from {repo} ({type(e).__name__}); "
                              "give a local .safetensors voice file instead") from e


class TtsGen:
    """The TTS state machine around a conditioned `LmGen` (torch `TTSModel` with its defaults)."""

    def __init__(self, lm: Lm, voices: Sequence[Sequence[mx.array]], cfg_coef: float = 2.0, temp: float = 0.6,
                 top_k: int = 250, top_k_text: int = 25, seed: int | None = None, max_padding: int = 8,
                 initial_padding: int = 2, final_padding: int = 4, max_steps: int = 30_000,
                 padding_bonus: float = 0.0, n_q: int | None = None):
        """`voices`: per batch row, its voice embeddings `[1, T, dim]` (`models.tts.load_voice`), main
        speaker first. `cfg_coef`: the guidance a CFG-distilled model is conditioned on; temp 0 is greedy.
        `padding_bonus`: added to the pad token's logit (torch `padding_bonus`: > 0 speaks slower).
        `n_q`: generate only the first `n_q` codebooks (faster, coarser audio; torch `TTSModel.n_q`: the
        others are fed the zero token)."""
        self.settings = s = check_tts(lm)
        cfg = lm.cfg
        if cfg.n_q != cfg.dep_q:
            raise InvalidArgument("a TTS model generates every codebook (n_q == dep_q)")
        if n_q is not None and n_q != cfg.n_q:
            if not 1 <= n_q <= cfg.n_q:
                raise InvalidArgument(f"n_q must be between 1 and the model's {cfg.n_q} codebooks, got {n_q}")
            lm = copy.copy(lm)  # the same weights, seen as generating n_q codebooks (torch sets lm.dep_q)
            lm.cfg = cfg = replace(cfg, dep_q=n_q)
        audio_delays = cfg.delays[1:]
        if any(b < a for a, b in zip(audio_delays, audio_delays[1:])):
            # zeroing early tokens as forced tokens equals torch's after-the-fact hook only then
            raise InvalidArgument("TTS needs non-decreasing audio delays")
        if s.valid_cfg:
            cond_cfg = float(cfg_coef)
        elif cfg_coef != 1.0:
            raise InvalidArgument("this TTS model is not CFG-distilled; guidance by a contrast batch is not supported "
                                  "(use cfg_coef 1)")
        else:
            cond_cfg = None
        if voices and any(voices) and not s.multi_speaker:
            raise InvalidArgument("this TTS model takes no voice embeddings (audio-prefix voices are not supported)")
        self.lm, self.batch_size = lm, len(voices)
        self.final_padding, self.max_steps = final_padding, max_steps
        self.machine = StateMachine(TokenIds(cfg.text_card + 1), s.second_stream_ahead, max_padding, initial_padding)
        conditions = lm.conditions([condition_attributes(s, list(v), cond_cfg) for v in voices]) if lm.fuser else None
        text_sampler = make_sampler(temp, top_k_text)
        if padding_bonus:
            bias = np.zeros(lm.cfg.text_out_vocab, np.float32)
            bias[self.machine.token_ids.pad] = padding_bonus
            bias_mx, plain = mx.array(bias), text_sampler

            def text_sampler(logits: mx.array, key: mx.array | None = None) -> mx.array:
                return plain(logits + bias_mx, key)

        self.lm_gen = LmGen(lm, text_sampler, make_sampler(temp, top_k), batch_size=len(voices),
                            seed=seed, conditions=conditions, text_choice=self.machine.token_ids.new_word)
        self.states: list[State] = []

    @property
    def delay_steps(self) -> int:
        return self.settings.delay_steps

    def steps(self, entries: Sequence[Sequence[Entry]]) -> Iterator[TtsStep]:
        """Runs the model over one script per row (`script_to_entries`) until every row has ended."""
        if len(entries) != self.batch_size:
            raise InvalidArgument(f"{len(entries)} scripts for {self.batch_size} rows")
        self.lm_gen.reset()
        cfg, machine = self.lm.cfg, self.machine
        self.states = states = [machine.new_state(e) for e in entries]
        B, ungen = self.batch_size, cfg.ungenerated_token_id
        no_user = mx.full((B, cfg.n_q - cfg.dep_q), machine.token_ids.zero, dtype=mx.int32)
        for step in range(self.max_steps):
            ends = [st.end_step for st in states]
            if all(e is not None for e in ends) and step >= max(ends) + self.delay_steps + self.final_padding:
                return
            audio = [machine.token_ids.zero if step < d + self.delay_steps else ungen
                     for d in cfg.delays[1 : 1 + cfg.dep_q]]
            choices = [machine.choices(step, st) for st in states]
            force = mx.array([[pad[0]] + audio for pad, _ in choices], dtype=mx.int32)
            frame = self.lm_gen.step(no_user, force, mx.array([word[0] for _, word in choices], dtype=mx.int32))
            sampled = np.array(self.lm_gen.sampled_text).tolist()
            picks = [word if t == machine.token_ids.new_word else pad for t, (pad, word) in zip(sampled, choices)]
            self.states = states = [p[1] for p in picks]
            yield TtsStep(step, sampled, [p[0] for p in picks], frame)

    def pcm(self, entries: Sequence[Entry], mimi: MimiLike) -> Iterator[np.ndarray]:
        """The voice of one script (batch 1), 80 ms chunks of 24 kHz float32, as Mimi decodes them."""
        n = self.lm.cfg.dep_q
        if isinstance(mimi, RustMimi) and mimi.num_codebooks != n:
            raise InvalidArgument(f"the rust Mimi decodes {mimi.num_codebooks} codebooks only; "
                                  f"use --mimi-backend mlx for n_q {n}")
        mimi.reset()
        frames = 0
        for st in self.steps([entries]):
            if st.frame is None:
                continue
            frames += 1
            if frames > self.delay_steps:
                yield np.array(mimi.decode_step(st.frame[:, 1:, None])).reshape(-1)

    @property
    def transcript(self) -> list[tuple[str, float]]:
        """Row 0's words with the time (s) each starts in the audio, once `steps` has run."""
        return [(w, step / 12.5) for w, step in (self.states[0].transcript if self.states else [])]


def speak(text: str | Sequence[str], voice: str | Path | Sequence[str | Path] = (), model: Any = None,
          **kwargs: Any) -> Iterator[np.ndarray]:
    """Speaks `text` (a string, or one per turn, main speaker first) with a Kyutai TTS model, yielding
    80 ms chunks of 24 kHz audio as they are made.

    Args:
        text: the script; `<break time="0.5s"/>` inserts a pause.
        voice: voice(s), main speaker first: local `.safetensors` embedding files, or names in kyutai/tts-voices.
        model: a `Pretrained` or where to load one from (default kyutai/tts-1.6b-en_fr).
        **kwargs: `TtsGen` options (`cfg_coef`, `temp`, `seed`, paddings, `max_steps`), and `padding_between` (1).
    """
    from ..weights.pretrained import Pretrained, load_pretrained

    pretrained = model if isinstance(model, Pretrained) else load_pretrained(model or DEFAULT_TTS)
    settings = check_tts(pretrained.lm)
    voices = [voice] if isinstance(voice, (str, Path)) else list(voice)
    embeddings = [load_voice(voice_path(v, settings)) for v in voices]
    script = [text] if isinstance(text, str) else list(text)
    entries = prepare_script(pretrained.tokenizer, pretrained.lm, settings, script, kwargs.pop("padding_between", 1))
    gen = TtsGen(pretrained.lm, [embeddings], **kwargs)
    yield from gen.pcm(entries, pretrained.mimi)


def prepare_script(tokenizer: Tokenizer, lm: Lm, settings: TtsSettings, script: Sequence[str],
                   padding_between: int = 1) -> list[Entry]:
    """`script_to_entries` with the model's token ids; an empty script is a one-line error."""
    if not any(line.strip() for line in script):
        raise InvalidArgument("nothing to say: the text is empty")
    return script_to_entries(tokenizer, TokenIds(lm.cfg.text_card + 1), script, settings.multi_speaker,
                             padding_between)
