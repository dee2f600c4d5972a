"""One full-duplex conversation, frame by frame: the user's 80 ms of audio in, Moshi's text and
80 ms of audio out. The chat loop, the file runner and the benchmark all drive this class."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import InvalidArgument
from ..generate import LmGen
from ..hub import DEFAULT_REPO
from ..models.codec import FRAME_SIZE, MimiLike
from ..sampling import SamplingParams
from ..weights.model_type import check_model_type
from ..weights.pretrained import load_pretrained


class TextStream(Protocol):
    """Turns text tokens into text one at a time (e.g. `Tokenizer.streaming()`)."""

    def push(self, token: int) -> str: ...

    def reset(self) -> None: ...


@dataclass
class FrameResult:
    """Output of one step: the text piece ('' when silent) and Moshi's audio (None while the
    delays fill, i.e. during the first `max_delay` steps)."""

    text: str
    text_token: int | None
    pcm: np.ndarray | None


def _state_arrays(obj: object) -> list[mx.array]:
    """The arrays an object holds in its attributes (directly, or in lists, tuples and dicts; not
    in modules): e.g. an `LmGen`'s token ring, KV buffers and random key."""
    found: list[mx.array] = []

    def visit(x: object, depth: int) -> None:
        if isinstance(x, mx.array):
            found.append(x)
        elif depth and isinstance(x, (list, tuple)):
            for v in x:
                visit(v, depth - 1)
        elif depth and isinstance(x, dict):
            for v in x.values():
                visit(v, depth - 1)
        elif depth and hasattr(x, "__dict__") and not isinstance(x, (nn.Module, type)) and not callable(x):
            for v in vars(x).values():
                visit(v, depth - 1)

    for value in vars(obj).values():
        visit(value, 3)
    return found


class Conversation:
    """Mimi encode -> `LmGen.step` -> Mimi decode, with one evaluation boundary per frame.

    One conversation at a time (batch size 1); `frame_size` defaults to Mimi's (`MimiConfig.frame_size`)."""

    def __init__(
        self,
        lm_gen: LmGen,
        mimi: MimiLike,
        text: TextStream | None = None,
        frame_size: int = FRAME_SIZE,
    ):
        cfg = lm_gen.lm.cfg
        if lm_gen.batch_size != 1:
            raise InvalidArgument(
                f"a Conversation is one stream of audio: its LmGen must have batch_size 1, got {lm_gen.batch_size} "
                "(for batches use LmGen directly, or MoshiForConditionalGeneration.generate)"
            )
        self.lm_gen = lm_gen
        self.mimi = mimi
        self.frame_size = frame_size
        self.text = text
        # PAD and end-of-padding tokens print nothing (Kyutai's clients do the same).
        self.silent_tokens = {cfg.existing_text_padding_id, cfg.existing_text_end_padding_id}
        self.steps = 0

    def reset(self) -> None:
        """Starts a new conversation without reloading any weights."""
        self.lm_gen.reset()
        self.mimi.reset()
        if self.text is not None:
            self.text.reset()
        self.steps = 0

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = DEFAULT_REPO,
        mimi_backend: str | None = None,
        dtype: mx.Dtype | None = None,
        sampling: SamplingParams | None = None,
        adapter: str | Path | None = None,
    ) -> "Conversation":
        """Loads the LM, Mimi and tokenizer of `source` ("org/repo", a folder or weights file), with a
        fine-tune's `adapter` (checkpoint folder or adapter file) applied when given."""
        sampling = sampling or SamplingParams()
        check_model_type(source, "moshi")  # STT, Hibiki, TTS: one line naming their command, before any weights
        model = load_pretrained(source, mimi_backend, dtype, adapter=adapter)
        gen = LmGen(model.lm, sampling.text_sampler(), sampling.audio_sampler(), seed=sampling.seed)
        # PAD/EPAD never reach the text stream: `step` keeps them silent itself.
        return cls(gen, model.mimi, model.tokenizer.streaming())

    def materialize(self) -> None:
        """Evaluates the weights and state now, on this thread. MLX streams are per thread: lazy
        arrays must be evaluated by the thread that created them before another thread uses them."""
        arrays = [self.lm_gen.lm.parameters(), _state_arrays(self.lm_gen)]
        if isinstance(self.mimi, nn.Module):
            arrays.append(self.mimi.parameters())
        mx.eval(arrays)

    def warmup(self, frames: int = 4) -> None:
        """Runs a few silent frames (compiles kernels, fills allocator caches), then resets."""
        silence = np.zeros(self.frame_size, dtype=np.float32)
        for _ in range(frames):
            self.step(silence)
        self.reset()

    def step(self, pcm: np.ndarray) -> FrameResult:
        """Processes one frame of `frame_size` float32 samples of the user's voice (24 kHz mono).

        Same as `decode(lm_step(encode(pcm)))`; `audio.overlap.OverlappedSteps` runs those three
        parts of consecutive frames concurrently, with identical results."""
        tokens = self.lm_step(self.encode(pcm))
        if tokens is None:
            return FrameResult("", None, None)
        return self.decode(tokens)

    def encode(self, pcm: np.ndarray) -> mx.array:
        """Mimi's codes `[1, K, 1]` of the user's next frame (lazy with MLX Mimi)."""
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if pcm.shape[0] != self.frame_size:
            raise InvalidArgument(f"expected a frame of {self.frame_size} samples, got {pcm.shape[0]}")
        return self.mimi.encode_step(pcm[None, None, :])

    def lm_step(self, codes: mx.array) -> mx.array | None:
        """The LM's step on the user's codes `[1, K, 1]`: Moshi's tokens `[1, 1 + dep_q]`, or None
        while the delays fill (scheduled, not yet read)."""
        tokens = self.lm_gen.step(codes[:, : self.lm_gen.num_user_codebooks, 0])
        self.steps += 1
        return tokens

    def decode(self, tokens: mx.array) -> FrameResult:
        """Moshi's audio and text for the tokens `[1, 1 + dep_q]` of one step."""
        out = self.mimi.decode_step(tokens[:, 1:, None])
        mx.eval(tokens, out)  # the one evaluation boundary of the frame (MLX Mimi)
        token = int(np.array(tokens[0, 0]))
        text = ""
        if token not in self.silent_tokens and self.text is not None:
            text = self.text.push(token)
        return FrameResult(text, token, np.asarray(out, dtype=np.float32).reshape(-1))
