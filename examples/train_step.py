"""A few optimizer steps on the Moshi LM's training loss (masked cross entropy, text + audio).

    python examples/train_step.py                       # tiny random model and random codes
    python examples/train_step.py --model ./tiny-moshi  # any LM `moshi_mlx.load_lm` reads (fp32 compute)
    python examples/train_step.py --model kyutai/moshiko-pytorch-bf16 --codes codes.npy

`--codes` is an int array `[B, 1 + n_q, T]` of undelayed tokens (text, Moshi audio, user audio).
"""

from __future__ import annotations

import argparse

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from moshi_mlx import Lm, LmConfig, load_lm

TINY = dict(
    dim=64, text_card=128, n_q=6, dep_q=3, card=64, num_heads=4, num_layers=2, hidden_scale=4.125,
    context=16, gating="silu", norm="rms_norm_f32", positional_embedding="rope",
    depformer_dim=32, depformer_dim_feedforward=96, depformer_num_heads=2, depformer_num_layers=1,
    depformer_multi_linear=True, depformer_weights_per_step=True, depformer_pos_emb="none",
    delays=[0, 0, 1, 1, 0, 1, 1],
)


def tiny_model(seed: int = 0) -> Lm:
    """A randomly initialised small Moshi-shaped LM."""
    mx.random.seed(seed)
    lm = Lm(LmConfig.from_kyutai_json(TINY))
    mx.eval(lm.parameters())
    return lm


def random_codes(lm: Lm, batch: int = 4, steps: int = 24, seed: int = 0) -> mx.array:
    """Undelayed codes with a learnable pattern (each stream repeats a short random motif)."""
    cfg = lm.cfg
    rng = np.random.default_rng(seed)
    motif = rng.integers(0, cfg.card, size=(batch, cfg.num_codebooks, 4))
    motif[:, 0] = rng.integers(0, cfg.text_card, size=(batch, 4))
    return mx.array(np.tile(motif, (1, 1, steps // 4)).astype(np.int32))


def train(lm: Lm, codes: mx.array, steps: int = 20, lr: float = 3e-3) -> list[float]:
    """Runs `steps` AdamW steps on `lm.loss(codes).total`; returns the loss before each step."""
    lm.train()
    optimizer = optim.AdamW(learning_rate=lr, weight_decay=0.0)
    loss_and_grad = nn.value_and_grad(lm, lambda model, c: model.loss(c).total)
    losses = []
    for _ in range(steps):
        loss, grads = loss_and_grad(lm, codes)
        optimizer.update(lm, grads)
        mx.eval(lm.parameters(), optimizer.state, loss)
        losses.append(float(loss))
    lm.eval()
    return losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="LM folder, weights file or org/repo (default: tiny random model)")
    parser.add_argument("--codes", help=".npy codes [B, 1 + n_q, T] (default: random patterned codes)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args(argv)
    lm = load_lm(args.model, dtype=mx.float32) if args.model else tiny_model()
    codes = mx.array(np.load(args.codes).astype(np.int32)) if args.codes else random_codes(lm)
    losses = train(lm, codes, args.steps, args.lr)
    for i, loss in enumerate(losses):
        print(f"step {i:3d}  loss {loss:.4f}")
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
