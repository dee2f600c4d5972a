"""`moshi-mlx bench`: LmGen step latency, ours vs Kyutai's moshi_mlx 0.3.0 in one run."""

from __future__ import annotations

import os

from ..bench import bench_configs, run_bench
from .common import ArgumentParser, run


def configure_parser() -> ArgumentParser:
    p = ArgumentParser(prog="moshi-mlx bench", description=__doc__)
    p.add_argument("--config", default="small", choices=sorted(bench_configs()), help="architecture (random weights)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--quantize", type=int, choices=[4, 8], default=None, help="quantize to this many bits")
    p.add_argument("--group-size", type=int, default=None, help="quantization group size (default 32 for q4, 64 for q8)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per implementation")
    p.add_argument(
        "--kyutai-python",
        default=os.environ.get("MOSHI_MLX_KYUTAI_PYTHON"),
        help="python of a separate venv with Kyutai's moshi_mlx==0.3.0 (env MOSHI_MLX_KYUTAI_PYTHON); "
        "without it only ours is timed",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    args = configure_parser().parse_args(argv)
    group = args.group_size or (32 if args.quantize == 4 else 64)
    run(
        "moshi-mlx bench",
        lambda: run_bench(
            args.config, args.dtype, args.quantize, group, args.steps, args.warmup, args.rounds, args.kyutai_python
        ),
    )
