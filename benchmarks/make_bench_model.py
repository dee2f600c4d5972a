"""A model folder with one of `moshi-mlx bench`'s LM architectures (random weights) and the published
Mimi architecture (random, informative weights), so `moshi-mlx run`/`chat` can be timed end to end,
e.g. the real-time factor of `run` on the `small` config:

    python -m benchmarks.make_bench_model /tmp/small-moshi --config small
    moshi-mlx run question.wav answer.wav --model /tmp/small-moshi --mimi-backend rust

The text vocabulary is the tokenizer's (a few hundred pieces, as `make-tiny`), not the bench
config's 32000, so that every sampled text token prints; everything else is the bench config.
Run from the repository root.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mlx.core as mx

from moshi_mlx.cli.bench import bench_configs
from moshi_mlx.config import LmConfig, MimiConfig
from moshi_mlx.models.lm import Lm
from moshi_mlx.weights.mimi import save_mimi
from moshi_mlx.weights.save import save_lm
from moshi_mlx.weights.tiny import MIMI_NAME, TOKENIZER_NAME, train_tokenizer
from moshi_mlx.weights.tiny_mimi import informative_mimi


def make_bench_model(out_dir: str | Path, config: str = "small", seed: int = 0) -> Path:
    """Writes the folder `out_dir` (must not exist or be empty) for bench config `config`."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vocab = train_tokenizer(tmp / TOKENIZER_NAME)
        save_mimi(informative_mimi(MimiConfig.mimi_202407(num_codebooks=32), seed), tmp / MIMI_NAME)
        mx.random.seed(seed)
        lm = Lm(LmConfig.from_kyutai_json({**bench_configs()[config], "text_card": vocab}))
        mx.eval(lm.parameters())
        return save_lm(lm, out_dir, extra_files=[tmp / TOKENIZER_NAME, tmp / MIMI_NAME])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="new folder (must not exist or be empty)")
    p.add_argument("--config", default="small", choices=sorted(bench_configs()), help="LM architecture (default small)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    args = p.parse_args()
    print(make_bench_model(args.out_dir, args.config, args.seed))


if __name__ == "__main__":
    main()
