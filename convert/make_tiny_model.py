"""Writes a tiny random Moshi model folder in Kyutai's repo layout, for offline end-to-end runs.

    python convert/make_tiny_model.py ./tiny-moshi
    moshi-mlx run --model ./tiny-moshi question.wav answer.wav

The folder holds `config.json` + `model.safetensors` (our format: a 2-layer LM with Moshi's
stream layout — 1 text + 8 Moshi + 8 user codebooks, 2048-entry audio codebooks, 7B delays),
`tokenizer_spm_32k_3.model` (a small SentencePiece model; the LM's text vocabulary matches it)
and `tokenizer-e351c8d8-checkpoint125.safetensors` (a full-size Mimi with random weights fitted
to speech, built by `make_mimi_fixture.py`; needs torch and moshi). Its answers are noise: it
exercises every code path, not the quality of the model.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx

from moshi_mlx.config import LmConfig
from moshi_mlx.hub import MIMI_NAME, TOKENIZER_NAME
from moshi_mlx.models.lm import Lm
from moshi_mlx.weights.save import save_lm

HERE = Path(__file__).resolve().parent

CORPUS = [
    "Hello, I am Moshi, a speech model that listens and talks at the same time.",
    "How are you doing today? I am fine, thank you for asking.",
    "The weather is nice and the sun is shining over the city.",
    "Tell me a story about a cat who wanted to fly to the moon.",
]


def tiny_config(text_card: int) -> dict:
    """Moshi's stream layout at a size that runs instantly on a CPU."""
    return dict(
        dim=64, text_card=text_card, existing_text_padding_id=3, n_q=16, dep_q=8, card=2048,
        num_heads=4, num_layers=2, hidden_scale=4.125, causal=True, context=250, max_period=10000,
        gating="silu", norm="rms_norm_f32", positional_embedding="rope", depformer_dim=64,
        depformer_dim_feedforward=int(4.125 * 64), depformer_num_heads=4, depformer_num_layers=1,
        depformer_multi_linear=True, depformer_weights_per_step=True, depformer_pos_emb="none",
        depformer_gating="silu", delays=[0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
    )


def train_tokenizer(path: Path, vocab_size: int = 400) -> Path:
    """A small SentencePiece model (byte fallback, so any text encodes); ids 0-3 as Moshi's."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=vocab_size, byte_fallback=True,
        character_coverage=1.0, model_type="bpe", minloglevel=2,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3,
    )
    path.write_bytes(model.getvalue())
    return path


def build_mimi(path: Path, seed: int = 0) -> Path:
    spec = importlib.util.spec_from_file_location("make_mimi_fixture", HERE / "make_mimi_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.save_fixture(path, seed)
    return path


def make_tiny_model(out_dir: str | Path, seed: int = 0, mimi: str | Path | None = None) -> Path:
    """Writes the folder; `mimi` reuses an existing Mimi safetensors instead of building one."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer = train_tokenizer(tmp / TOKENIZER_NAME)
        import sentencepiece

        vocab = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer)).get_piece_size()
        mimi_path = tmp / MIMI_NAME
        if mimi is not None:
            shutil.copyfile(mimi, mimi_path)
        else:
            build_mimi(mimi_path, seed)
        mx.random.seed(seed)
        lm = Lm(LmConfig.from_kyutai_json(tiny_config(vocab)))
        mx.eval(lm.parameters())
        return save_lm(lm, out_dir, extra_files=[tokenizer, mimi_path])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="new folder to create")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mimi", type=Path, default=None, help="reuse this Mimi safetensors file")
    args = parser.parse_args()
    print(make_tiny_model(args.out, args.seed, args.mimi))


if __name__ == "__main__":
    main()
