"""Moshi's answer to a wav prompt with the transformers-style `generate()` API.

    python examples/api_generate.py                     # tiny random LM + random Mimi, synthetic prompt
    python examples/api_generate.py --wav question.wav --lm-config config.json \
        --lm-weights model.safetensors --mimi-weights tokenizer-e351c8d8-checkpoint125.safetensors \
        --tokenizer tokenizer_spm_32k_3.model --out answer.wav

The prompt is the user's audio; Moshi's own prompt streams are silence (Mimi codes of zeros)
and text PAD tokens. Output: the generated waveform (prompt frames included) and its text.
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx
import numpy as np

from moshi_mlx.api import FRAME_SIZE, MoshiForConditionalGeneration
from moshi_mlx.config import LmConfig, MimiConfig
from moshi_mlx.models.lm import Lm
from moshi_mlx.tokenizer import Tokenizer
from moshi_mlx.weights.kyutai_torch import load_lm_weights

SAMPLE_RATE = 24_000

# Moshi's stream layout (1 text + 8 Moshi + 8 user codebooks over Mimi's 2048-entry codebooks,
# 7B delays) at a size that runs instantly.
TINY_MOSHI = dict(
    dim=64, text_card=32000, n_q=16, dep_q=8, card=2048, num_heads=4, num_layers=2, hidden_scale=4.125,
    context=64, gating="silu", norm="rms_norm_f32", positional_embedding="rope",
    depformer_dim=32, depformer_dim_feedforward=96, depformer_num_heads=2, depformer_num_layers=1,
    depformer_multi_linear=True, depformer_weights_per_step=True, depformer_pos_emb="none",
    delays=[0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
)


def load_lm(config: str | None, weights: str | None, seed: int = 0) -> Lm:
    mx.random.seed(seed)
    lm = Lm(LmConfig.from_file(config) if config else LmConfig.from_kyutai_json(TINY_MOSHI))
    if weights:
        load_lm_weights(lm, weights)
    mx.eval(lm.parameters())
    return lm


def load_codec(weights: str | None, num_codebooks: int):
    """The MLX Mimi: Kyutai's weights when given, else random weights (shapes only)."""
    from moshi_mlx.models.mimi import Mimi
    from moshi_mlx.weights.mimi import load_mimi

    if weights:
        return load_mimi(weights, MimiConfig.mimi_202407(num_codebooks))
    mimi = Mimi(MimiConfig.mimi_202407(num_codebooks))
    mx.eval(mimi.parameters())
    return mimi


def synthetic_prompt(seconds: float) -> np.ndarray:
    """A rising tone with a pause: stands in for a user's question."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = 0.3 * np.sin(2 * np.pi * (180 + 60 * t) * t)
    wave[int(0.6 * len(t)) :] = 0.0
    return wave.astype(np.float32)


def run(model: MoshiForConditionalGeneration, user_pcm: np.ndarray, max_new_tokens: int, seed: int):
    """Generates Moshi's continuation of a user waveform `[samples]`."""
    frames = -(-len(user_pcm) // FRAME_SIZE)
    pad = model.lm.cfg.existing_text_padding_id
    return model.generate(
        input_ids=np.full((1, frames), pad),
        user_input_values=user_pcm[None, None],
        moshi_input_values=np.zeros((1, 1, frames * FRAME_SIZE), dtype=np.float32),
        max_new_tokens=max_new_tokens,
        seed=seed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wav", help="user prompt (any format sphn reads; default: a synthetic tone)")
    parser.add_argument("--lm-config", help="Kyutai config.json (default: tiny random Moshi-shaped LM)")
    parser.add_argument("--lm-weights", help="Kyutai torch-format LM safetensors")
    parser.add_argument("--mimi-weights", help="Kyutai Mimi safetensors (default: random Mimi)")
    parser.add_argument("--tokenizer", help="SentencePiece model to print the text")
    parser.add_argument("--max-new-tokens", type=int, default=25, help="frames (80 ms each) to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="moshi_answer.wav")
    args = parser.parse_args()

    lm = load_lm(args.lm_config, args.lm_weights, args.seed)
    mimi = load_codec(args.mimi_weights, max(lm.cfg.dep_q, lm.cfg.n_q - lm.cfg.dep_q))
    if args.wav:
        from moshi_mlx.audio.io import read_audio

        user = read_audio(args.wav, SAMPLE_RATE)
    else:
        user = synthetic_prompt(1.0)
    start = time.perf_counter()
    out = run(MoshiForConditionalGeneration(lm, mimi), user, args.max_new_tokens, args.seed)
    mx.eval(out.sequences, out.audio_codes, out.audio_sequences)
    print(f"generated {args.max_new_tokens} frames in {time.perf_counter() - start:.1f}s")
    ids = np.array(out.sequences)[0].tolist()
    if args.tokenizer:
        detok = Tokenizer(args.tokenizer).streaming(skip_ids=(0, lm.cfg.existing_text_padding_id))
        print("text:", "".join(detok.push(i) for i in ids) + detok.flush())
    else:
        print("text ids:", ids)
    print("audio codes:", tuple(out.audio_codes.shape), "waveform:", tuple(out.audio_sequences.shape))
    from moshi_mlx.audio.io import write_wav

    print("wrote", write_wav(args.out, np.array(out.audio_sequences)[0, 0], SAMPLE_RATE))


if __name__ == "__main__":
    main()
