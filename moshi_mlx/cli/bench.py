"""`moshi-mlx bench`: per-step latency of the streaming LM (`LmGen.step`), ours against Kyutai's
`moshi_mlx` 0.3.0, in one run.

Kyutai's package shares our import name, so it runs in its own virtualenv, driven through a
subprocess (`--kyutai-python`); both sides are measured in the same run, interleaved round by
round, with the same architecture, dtype, quantization and samplers (random weights: timing does
not depend on their values).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgument
from ..config import LmConfig
from ..weights.common import DTYPES
from ..weights.quantize import default_group_size, group_size_help
from .common import ArgumentParser, run


def bench_configs() -> dict[str, dict]:
    """Architectures to time, as Kyutai config dicts. "small" keeps the 7B's vocabularies and
    depformer but shrinks the temporal transformer (1024 wide, 8 layers), so it runs on a CPU."""
    seven_b = dict(LmConfig.from_preset("moshi_7b").raw)
    small = {**seven_b, "dim": 1024, "num_heads": 16, "num_layers": 8}
    tiny = {**small, "dim": 256, "num_heads": 4, "num_layers": 2, "depformer_dim": 256,
            "depformer_num_heads": 4, "depformer_num_layers": 2, "depformer_dim_feedforward": 1056}
    return {"7b": seven_b, "small": small, "tiny": tiny}


@dataclass
class Timing:
    name: str
    step_ms: list[float]

    def line(self) -> str:
        s = np.array(self.step_ms)
        return f"{self.name:>10}: median {np.median(s):8.1f} ms/step  p90 {np.percentile(s, 90):8.1f}  (n={len(s)})"


def _quantize(model, bits: int | None, group_size: int) -> None:
    if bits:
        import mlx.nn as nn

        nn.quantize(model, group_size=group_size, bits=bits)


def time_ours(config: dict, dtype: str, bits: int | None, group_size: int, steps: int, warmup: int) -> list[float]:
    """Milliseconds per `LmGen.step` (until its tokens are evaluated) for our implementation."""
    import mlx.core as mx

    from ..generate import LmGen
    from ..models.lm import Lm

    model = Lm(LmConfig.from_kyutai_json(config))
    model.set_dtype(DTYPES[dtype])
    _quantize(model, bits, group_size)
    mx.eval(model.parameters())
    mx.random.seed(0)
    gen = LmGen(model)  # global random state, as Kyutai's samplers use
    user = mx.zeros((1, model.cfg.n_q - model.cfg.dep_q), dtype=mx.int32)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        out = gen.step(user)
        if out is not None:
            mx.eval(out)
            np.array(out)
        else:
            mx.eval(gen.tokens)
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    return times


_KYUTAI_SCRIPT = r"""
import json, sys, time
import mlx.core as mx, mlx.nn as nn
from moshi_mlx import models, utils
args = json.loads(sys.argv[1])
cfg = models.LmConfig.from_config_dict(args["config"])
model = models.Lm(cfg)
model.set_dtype(getattr(mx, args["dtype"]))
if args["bits"]:
    nn.quantize(model, group_size=args["group_size"], bits=args["bits"])
mx.eval(model.parameters())
gen = models.LmGen(model=model, max_steps=args["warmup"] + args["steps"] + 5,
                   text_sampler=utils.Sampler(temp=0.7, top_k=25), audio_sampler=utils.Sampler(temp=0.8, top_k=250))
user = mx.zeros((1, cfg.other_codebooks), dtype=mx.int32)
times = []
for i in range(args["warmup"] + args["steps"]):
    start = time.perf_counter()
    text = gen.step(user)
    text[0].item()
    audio = gen.last_audio_tokens()
    if audio is not None:
        mx.eval(audio)
    if i >= args["warmup"]:
        times.append(1000 * (time.perf_counter() - start))
print(json.dumps(times))
"""


def time_kyutai(
    python: str, config: dict, dtype: str, bits: int | None, group_size: int, steps: int, warmup: int
) -> list[float]:
    """Milliseconds per step of Kyutai's `moshi_mlx` `LmGen`, run by `python` (its own venv)."""
    mx_name = str(DTYPES[dtype]).rsplit(".", 1)[-1]  # "bf16" -> "bfloat16", an `mx` attribute
    args = dict(config=config, dtype=mx_name, bits=bits, group_size=group_size, steps=steps, warmup=warmup)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [python, "-c", _KYUTAI_SCRIPT, json.dumps(args)], capture_output=True, text=True, env=env, cwd="/"
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        raise RuntimeError(f"Kyutai moshi_mlx run failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_bench(
    config: str = "small",
    dtype: str = "fp32",
    bits: int | None = None,
    group_size: int | None = None,
    steps: int = 20,
    warmup: int = 3,
    rounds: int = 3,
    kyutai_python: str | None = None,
    out=sys.stdout,
) -> dict[str, Timing]:
    """Times both implementations `rounds` times, alternating, and prints medians and the ratio."""
    configs = bench_configs()
    if config not in configs:
        raise InvalidArgument(f"unknown bench config {config!r} (choose from {', '.join(configs)})")
    cfg = configs[config]
    if dtype not in DTYPES:
        raise InvalidArgument(f"unsupported dtype {dtype!r} (supported: {', '.join(DTYPES)})")
    group_size = group_size or (default_group_size(bits) if bits else 64)
    results = {"ours": Timing("ours", [])}
    if kyutai_python:
        results["kyutai"] = Timing("kyutai", [])
    for r in range(rounds):
        results["ours"].step_ms += time_ours(cfg, dtype, bits, group_size, steps, warmup)
        if kyutai_python:
            results["kyutai"].step_ms += time_kyutai(kyutai_python, cfg, dtype, bits, group_size, steps, warmup)
    quant = f"q{bits} g{group_size}" if bits else dtype
    print(f"LmGen.step, config {config!r}, {quant}, {rounds} rounds x {steps} steps", file=out)
    for timing in results.values():
        print(timing.line(), file=out)
    if kyutai_python:
        ratio = np.median(results["kyutai"].step_ms) / np.median(results["ours"].step_ms)
        print(f"speed-up over Kyutai moshi_mlx 0.3.0: {ratio:.2f}x (median step time ratio)", file=out)
    return results


def configure_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="moshi-mlx bench", description=__doc__,
        epilog="examples:\n  moshi-mlx bench --config tiny --steps 10\n"
        "  moshi-mlx bench --config 7b --dtype bf16 --quantize 4 --kyutai-python ~/kyutai-venv/bin/python",
    )
    p.add_argument("--config", default="small", choices=sorted(bench_configs()),
                   help="architecture, with random weights: 7b (Moshi), small (1024 wide, 8 layers), tiny")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="compute dtype of the LM")
    p.add_argument("--quantize", type=int, choices=[4, 8], default=None,
                   help="quantize Linear and Embedding weights to this many bits (default: not quantized)")
    p.add_argument("--group-size", type=int, default=None,
                   help=f"quantization group size (default: {group_size_help()})")
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
    run(
        "moshi-mlx bench",
        lambda: run_bench(
            args.config, args.dtype, args.quantize, args.group_size, args.steps, args.warmup, args.rounds, args.kyutai_python
        ),
    )
