"""Text generation with a Helium (text-only) or Moshi LM, printing tokens as they arrive.

    python examples/text_helium.py                      # tiny random model + a tokenizer trained here
    python examples/text_helium.py --model kyutai/moshiko-mlx-q4 --prompt "The capital of France is"
    python examples/text_helium.py --model ./tiny-moshi # any folder, file or repo `load_lm` reads

With `--model`, the LM loads with `moshi_mlx.load_lm` (Kyutai's torch or MLX layouts, bf16/q8/q4,
or ours) and the tokenizer is the one beside it (or `--tokenizer`).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import mlx.core as mx

from moshi_mlx import Lm, LmConfig, Tokenizer, load_lm, make_sampler, resolve, stream_text

CORPUS = [
    "Moshi is a speech-text foundation model for real-time dialogue.",
    "Helium is the text language model at its core.",
    "It listens and speaks at the same time, frame by frame.",
]


def tiny_tokenizer(folder: Path) -> Tokenizer:
    """A SentencePiece model trained on a few sentences (byte fallback, so any text encodes)."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=300, byte_fallback=True,
        character_coverage=1.0, model_type="bpe", normalization_rule_name="identity", minloglevel=2,
    )
    path = folder / "tiny.model"
    path.write_bytes(model.getvalue())
    return Tokenizer(path)


def tiny_helium(vocab: int, seed: int = 0) -> Lm:
    """A randomly initialised text-only LM (no audio streams) over `vocab` tokens."""
    mx.random.seed(seed)
    cfg = dict(
        dim=64, num_heads=4, num_layers=2, hidden_scale=4.125, context=32, gating="silu",
        norm="rms_norm_f32", positional_embedding="rope", max_period=100000,
        text_card=vocab, n_q=0, dep_q=0, card=1, delays=[0],
    )
    lm = Lm(LmConfig.from_kyutai_json(cfg))
    mx.eval(lm.parameters())
    return lm


def run(lm: Lm, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, temp: float, top_k: int,
        seed: int | None, out=sys.stdout) -> str:
    """Streams the continuation of `prompt` to `out`; returns the generated text."""
    ids = tokenizer.encode(prompt, bos=True)
    detok = tokenizer.streaming(skip_ids=(lm.cfg.existing_text_padding_id,) if lm.cfg.n_q else ())
    sampler = make_sampler(temp, top_k)
    pieces = [prompt]
    out.write(prompt)
    for token in stream_text(lm, [ids], max_new_tokens, sampler, seed):
        piece = detok.push(int(token[0]))
        if int(token[0]) == tokenizer.eos_id:
            break
        pieces.append(piece)
        out.write(piece)
        out.flush()
    tail = detok.flush()
    out.write(tail + "\n")
    return "".join(pieces[1:]) + tail


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="LM folder, weights file or org/repo (default: tiny random Helium)")
    parser.add_argument("--tokenizer", help="SentencePiece .model (default: the model's, else trained here)")
    parser.add_argument("--prompt", default="Moshi is")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--temp", type=float, default=0.7)
    parser.add_argument("--top-k", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            files = resolve(args.model, require=("lm",) if args.tokenizer else ("lm", "tokenizer"))
            lm = load_lm(args.model, files=files)
            tokenizer = Tokenizer(args.tokenizer or files.tokenizer)
        else:
            tokenizer = Tokenizer(args.tokenizer) if args.tokenizer else tiny_tokenizer(Path(tmp))
            lm = tiny_helium(tokenizer.vocab_size)
        run(lm, tokenizer, args.prompt, args.max_new_tokens, args.temp, args.top_k, args.seed)


if __name__ == "__main__":
    main()
