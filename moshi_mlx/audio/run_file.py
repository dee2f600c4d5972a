"""Offline conversation: a recorded user turn in, Moshi's audio and text out (file to file)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .conversation import Conversation
from .io import read_audio, write_wav


def run_file(
    conversation: Conversation,
    input_path: str | Path,
    output_path: str | Path,
    on_text: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, str]:
    """Feeds `input_path` (any rate/channels; resampled to 24 kHz mono) frame by frame and writes
    Moshi's voice, time-aligned with the input, to `output_path`. Returns (audio, text)."""
    pcm = read_audio(input_path)
    size = conversation.frame_size
    frames = -(-len(pcm) // size)
    pcm = np.pad(pcm, (0, frames * size - len(pcm)))
    # The last frames of Moshi's answer come out `max_delay` steps after their input.
    flush = conversation.lm_gen.lm.cfg.max_delay
    silence = np.zeros(size, dtype=np.float32)
    out, text = [], []
    for i in range(frames + flush):
        result = conversation.step(pcm[i * size : (i + 1) * size] if i < frames else silence)
        if result.pcm is not None:
            out.append(result.pcm)
        if result.text:
            text.append(result.text)
            if on_text is not None:
                on_text(result.text)
    audio = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
    write_wav(output_path, audio)
    return audio, "".join(text)
