"""Moshi's answer to a wav prompt with the transformers-style `generate()` API.

    python examples/api_generate.py                       # a tiny random model built here, a synthetic prompt
    python examples/api_generate.py --model kyutai/moshiko-mlx-q4 --wav question.wav --out answer.wav
    python examples/api_generate.py --model ./tiny-moshi  # any folder, file or repo `moshi-mlx` accepts

The prompt is the user's audio; Moshi's own prompt streams are silence and text PAD tokens.
Output: the generated waveform (prompt frames included) and its text. The tiny model's answer
is noise, but audible noise: it shows the whole pipeline works.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from moshi_mlx import MoshiForConditionalGeneration, Tokenizer, load_lm, load_mimi_backend, resolve
from moshi_mlx.api import FRAME_SIZE
from moshi_mlx.audio.io import read_audio, write_wav
from moshi_mlx.weights.tiny import make_tiny_model
from moshi_mlx.weights.tiny_mimi import speech_like

SAMPLE_RATE = 24_000


def load(source: str | Path, mimi_backend: str | None = None):
    """The LM (any layout `load_lm` reads), its Mimi and its tokenizer from one model source."""
    files = resolve(source)
    lm = load_lm(source, files=files)
    n = max(lm.cfg.dep_q, lm.cfg.n_q - lm.cfg.dep_q)
    mimi = load_mimi_backend(files.mimi, mimi_backend, n, files.mimi_config(n))
    return lm, mimi, Tokenizer(files.tokenizer)


def run(model: MoshiForConditionalGeneration, user_pcm: np.ndarray, max_new_tokens: int, seed: int):
    """Generates Moshi's continuation of a user waveform `[samples]` (padded to whole frames)."""
    frames = -(-len(user_pcm) // FRAME_SIZE)
    user = np.zeros(frames * FRAME_SIZE, dtype=np.float32)
    user[: len(user_pcm)] = user_pcm
    return model.generate(
        input_ids=np.full((1, frames), model.lm.cfg.existing_text_padding_id),
        user_input_values=user[None, None],
        moshi_input_values=np.zeros((1, 1, frames * FRAME_SIZE), dtype=np.float32),
        max_new_tokens=max_new_tokens,
        seed=seed,
    )


def answer(source: str | Path, user: np.ndarray, out: str | Path, max_new_tokens: int, seed: int,
           mimi_backend: str | None = None) -> tuple[np.ndarray, str]:
    """Loads `source`, answers `user`, writes the waveform to `out`; returns (waveform, text)."""
    lm, mimi, tokenizer = load(source, mimi_backend)
    start = time.perf_counter()
    result = run(MoshiForConditionalGeneration(lm, mimi), user, max_new_tokens, seed)
    mx.eval(result.sequences, result.audio_sequences)
    print(f"generated {max_new_tokens} frames in {time.perf_counter() - start:.1f} s")
    detok = tokenizer.streaming(skip_ids=(0, lm.cfg.existing_text_padding_id))
    text = "".join(detok.push(int(i)) for i in np.array(result.sequences)[0]) + detok.flush()
    wave = np.array(result.audio_sequences)[0, 0]
    write_wav(out, wave, SAMPLE_RATE)
    return wave, text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="folder, weights file or org/repo (default: a tiny random model built here)")
    parser.add_argument("--wav", help="user prompt, any format and rate (default: 2 s of a speech-like signal)")
    parser.add_argument("--mimi-backend", choices=["mlx", "rust"], default=None, help="default: auto")
    parser.add_argument("--max-new-tokens", type=int, default=25, help="frames (80 ms each) to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="moshi_answer.wav")
    args = parser.parse_args(argv)
    user = read_audio(args.wav, SAMPLE_RATE) if args.wav else speech_like(2.0, SAMPLE_RATE)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.model or make_tiny_model(Path(tmp) / "tiny-moshi")
        wave, text = answer(source, user, args.out, args.max_new_tokens, args.seed, args.mimi_backend)
    print("text:", text)
    print(f"wrote {args.out}: {len(wave) / SAMPLE_RATE:.2f} s, peak {np.abs(wave).max():.3f}")


if __name__ == "__main__":
    main()
