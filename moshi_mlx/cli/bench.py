"""`moshi-mlx bench`: the streaming LM step (`LmGen.step`), ours against Kyutai's `moshi_mlx` 0.3.0,
in one run: milliseconds per step, per-component times, graph nodes built in Python per frame,
peak memory, and the weight-read roofline.

Each side runs in its own process (Kyutai's package shares our import name; separate processes
also make the peak memories comparable), round by round, interleaved, with the same architecture,
dtype, quantization and samplers (random weights: timing does not depend on their values; odd
rounds run the sides in reverse order). The step time reported is the minimum over rounds of
each round's median. The roofline is the time to read one step's weights (all but the embedding
tables) at the bandwidth this device reaches on a plain matrix-vector product over as many bytes
(at most 1 GiB) in the same dtype/quantization (quantized: as our layers compute it, in fp32 on the
CPU; there, the faster of one core and all of them).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import LmConfig
from ..errors import InvalidArgument
from ..weights.common import DTYPES
from ..weights.quantize import default_group_size, group_size_help
from .common import ArgumentParser, run

WORKER = Path(__file__).with_name("bench_worker.py")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding our `moshi_mlx`
PRECISIONS = ("fp32", "bf16", "fp16", "q8", "q4")  # q8/q4: bf16 compute, quantized weights


def bench_configs() -> dict[str, dict]:
    """Architectures to time, as Kyutai config dicts. "small" keeps the 7B's vocabularies and
    depformer but shrinks the temporal transformer (1024 wide, 8 layers), so it runs on a CPU;
    "micro" keeps the 7B's layer counts, stream layout and delays at width 64 (text vocabulary
    1000, codebooks of 256): a few MB of weights, so a step costs what building and dispatching
    its graph costs, as a 7B step does on a GPU at batch 1."""
    seven_b = dict(LmConfig.from_preset("moshi_7b").raw)
    small = {**seven_b, "dim": 1024, "num_heads": 16, "num_layers": 8}
    tiny = {**small, "dim": 256, "num_heads": 4, "num_layers": 2, "depformer_dim": 256,
            "depformer_num_heads": 4, "depformer_num_layers": 2, "depformer_dim_feedforward": 1056}
    micro = {**seven_b, "dim": 64, "num_heads": 4, "text_card": 1000, "card": 256, "depformer_dim": 64,
             "depformer_num_heads": 4, "depformer_dim_feedforward": 264}
    return {"7b": seven_b, "small": small, "tiny": tiny, "micro": micro}


def parse_precision(name: str) -> tuple[str, int | None]:
    """"fp32"/"bf16"/"fp16" -> (dtype, None); "q8"/"q4" -> ("bf16", bits); "fp32+q4" -> ("fp32", 4)."""
    dtype, _, quant = name.rpartition("+")
    if not dtype:  # no "+": a dtype alone, or qN computing in bf16
        dtype, quant = (name, "") if name in DTYPES else ("bf16", name)
    if dtype in DTYPES and quant in ("", "q8", "q4"):
        return dtype, int(quant[1]) if quant else None
    raise InvalidArgument(f"unknown precision {name!r} (choose from {', '.join(PRECISIONS)}, or DTYPE+q8/q4)")


def kyutai_env(kyutai_path: str | None) -> dict[str, str]:
    """Environment of Kyutai's process: our package's folder off PYTHONPATH, `kyutai_path` on it."""
    ours = str(PACKAGE_ROOT)
    keep = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != ours]
    if kyutai_path:
        keep.insert(0, os.path.abspath(kyutai_path))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if keep:
        env["PYTHONPATH"] = os.pathsep.join(keep)
    return env


def call_worker(python: str, args: dict, env: dict[str, str]) -> dict:
    """Runs the worker (`bench_worker.py`'s source via `python -c`, from /) and returns its JSON."""
    proc = subprocess.run([python, "-c", WORKER.read_text(), json.dumps(args)],
                          capture_output=True, text=True, env=env, cwd="/")
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise RuntimeError(f"{args['side']} run failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ours_env() -> dict[str, str]:
    path = [str(PACKAGE_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def compiled_switch() -> bool:
    """Whether our `LmGen` takes `compiled=` (then both paths are timed)."""
    import inspect

    from ..generate import LmGen

    return "compiled" in inspect.signature(LmGen).parameters


@dataclass
class Side:
    """What the rounds measured for one implementation."""

    name: str
    rounds: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        medians = [float(np.median(r["step_ms"])) for r in self.rounds]
        comps = {k: min(r["components_ms"][k] for r in self.rounds if k in r["components_ms"])
                 for k in self.rounds[0]["components_ms"]}
        return {
            "step_ms": min(medians), "round_medians_ms": medians,
            "p90_ms": float(np.percentile(self.rounds[int(np.argmin(medians))]["step_ms"], 90)),
            "components_ms": comps, "graph_nodes": self.rounds[-1]["graph_nodes"],
            "python_nodes": self.rounds[-1]["python_nodes"],
            "peak_rss_mb": max(r["rss_mb"] for r in self.rounds),
            "rss_after_imports_mb": max(r["rss_after_imports_mb"] for r in self.rounds),
            "mlx_peak_mb": max((r["mlx_peak_mb"] or 0) for r in self.rounds) or None,
            "module": self.rounds[-1]["module"],
            "param_bytes": self.rounds[-1]["param_bytes"],
            "unquantized_layers": self.rounds[-1]["unquantized_layers"],
        }


def machine() -> tuple[str, str]:
    """(machine name, backend) of this MLX: e.g. ("AMD EPYC", "mlx-cpu")."""
    import mlx.core as mx

    info = mx.device_info()
    name = str(info.get("device_name") or platform.processor() or platform.machine())
    if mx.default_device() == mx.cpu:
        return name, "mlx-cpu"
    return name, "mlx-metal" if mx.metal.is_available() else "mlx-cuda"


def bench_case(config: str, precision: str, group_size: int | None, steps: int, warmup: int, rounds: int,
               kyutai_python: str | None, kyutai_path: str | None, mimi: bool = True, uncompiled: bool = True) -> dict:
    """Measures one (config, precision): all sides, `rounds` interleaved rounds."""
    configs = bench_configs()
    if config not in configs:
        raise InvalidArgument(f"unknown bench config {config!r} (choose from {', '.join(configs)})")
    dtype, bits = parse_precision(precision)
    group_size = group_size or (default_group_size(bits) if bits else 64)
    mx_dtype = str(DTYPES[dtype]).rsplit(".", 1)[-1]  # "bf16" -> "bfloat16", an `mx` attribute
    base = dict(config=configs[config], dtype=mx_dtype, bits=bits, group_size=group_size, steps=steps,
                warmup=warmup, component_steps=max(3, steps // 2), mimi=mimi)
    sides = {"ours": dict(side="ours", compiled=True if compiled_switch() else None)}
    if sides["ours"]["compiled"] and uncompiled:
        sides["ours-uncompiled"] = dict(side="ours", compiled=False)
    if kyutai_python:
        sides["kyutai"] = dict(side="kyutai")
    envs = {"ours": ours_env(), "kyutai": kyutai_env(kyutai_path)}
    results = {name: Side(name) for name in sides}
    bandwidths: list[dict] = []
    read_bytes = None
    for i in range(rounds):
        # Odd rounds run the sides in reverse order, so neither side always follows the same process.
        for name, extra in (list(sides.items())[::-1] if i % 2 else sides.items()):
            python = kyutai_python if extra["side"] == "kyutai" else sys.executable
            # Mimi does not depend on the LM: timed in the first round only.
            r = call_worker(python, {**base, **extra, "mimi": mimi and i == 0}, envs[extra["side"]])
            read_bytes = r.get("weights_read_bytes", read_bytes)
            results[name].rounds.append(r)
        bandwidths.append(call_worker(sys.executable, {**base, "side": "bandwidth", "bytes": read_bytes,
                                                        "steps": max(20, steps)}, envs["ours"]))
    gbps = max(b["gb_per_s"] for b in bandwidths)
    roofline_ms = read_bytes / gbps / 1e6
    out = {"config": config, "precision": precision, "dtype": dtype, "bits": bits,
           "group_size": group_size if bits else None, "rounds": rounds, "steps": steps,
           "weights_read_mb": read_bytes / 2**20, "bandwidth_gb_s": gbps, "roofline_ms": roofline_ms,
           "sides": {}}
    for name, side in results.items():
        s = side.summary()
        s["roofline_fraction"] = roofline_ms / s["step_ms"]
        out["sides"][name] = s
    if "kyutai" in out["sides"]:
        out["speedup_over_kyutai"] = out["sides"]["kyutai"]["step_ms"] / out["sides"]["ours"]["step_ms"]
    return out


def run_bench(configs: list[str], precisions: list[str], group_size: int | None = None, steps: int = 20,
              warmup: int = 3, rounds: int = 3, kyutai_python: str | None = None, kyutai_path: str | None = None,
              mimi: bool = True, uncompiled: bool = True) -> dict:
    """Every (config, precision) case, plus where and when it ran."""
    name, backend = machine()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    cases = [bench_case(c, p, group_size, steps, warmup, rounds, kyutai_python, kyutai_path, mimi, uncompiled)
             for c in configs for p in precisions]
    return {"machine": name, "backend": backend, "date": date, "cases": cases}


def text_report(result: dict) -> str:
    lines = [f"{result['machine']}, {result['backend']}, {result['date']}"]
    for case in result["cases"]:
        lines.append(f"\nLmGen.step, config {case['config']!r}, {case['precision']}, {case['rounds']} rounds x "
                     f"{case['steps']} steps; weights read per step {case['weights_read_mb']:.1f} MB at "
                     f"{case['bandwidth_gb_s']:.1f} GB/s -> roofline {case['roofline_ms']:.2f} ms")
        for name, s in case["sides"].items():
            comp = "  ".join(f"{k} {v:.2f}" for k, v in s["components_ms"].items())
            lines.append(f"{name:>16}: {s['step_ms']:8.2f} ms/step (p90 {s['p90_ms']:.2f}; {s['roofline_fraction']:.0%} "
                         f"of roofline)  nodes/frame {s['python_nodes']} built in Python ({s['graph_nodes']} evaluated)  peak RSS {s['peak_rss_mb']:.0f} MB "
                         f"({s['rss_after_imports_mb']:.0f} after imports), "
                         f"MLX peak {s['mlx_peak_mb'] or 0:.0f} MB")
            lines.append(f"{'':>18}components (ms, each alone): {comp}")
        if "speedup_over_kyutai" in case:
            lines.append(f"speed-up over Kyutai moshi_mlx 0.3.0: {case['speedup_over_kyutai']:.2f}x")
    return "\n".join(lines)


TABLE_HEADER = ("| machine | backend | config | dtype | ours (ms/step) | Kyutai (ms/step) | ratio | roofline (ms) "
                "| ours / Kyutai of roofline | date |\n|---|---|---|---|---|---|---|---|---|---|")


def table_rows(result: dict) -> str:
    """README table rows (markdown), one per case."""
    rows = [TABLE_HEADER]
    for case in result["cases"]:
        ours, ky = case["sides"]["ours"], case["sides"].get("kyutai")
        ky_ms = f"{ky['step_ms']:.2f}" if ky else "-"
        ratio = f"{case['speedup_over_kyutai']:.2f}×" if ky else "-"
        frac = f"{ours['roofline_fraction']:.0%} / {ky['roofline_fraction']:.0%}" if ky else f"{ours['roofline_fraction']:.0%} / -"
        rows.append(f"| {result['machine']} | {result['backend']} | {case['config']} | {case['precision']} | "
                    f"{ours['step_ms']:.2f} | {ky_ms} | {ratio} | {case['roofline_ms']:.2f} | {frac} | {result['date']} |")
    return "\n".join(rows)


def configure_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="moshi-mlx bench", description=__doc__,
        epilog="examples:\n  moshi-mlx bench --config micro --steps 10\n"
        "  moshi-mlx bench --config micro,tiny --precision fp32,bf16,q8,q4 --table "
        "--kyutai-python ~/kyutai-venv/bin/python\n"
        "  moshi-mlx bench --config 7b --precision bf16 --json --kyutai-python python --kyutai-path ./kyutai-site",
    )
    p.add_argument("--config", default="small",
                   help=f"architecture(s), comma-separated, random weights: {', '.join(bench_configs())} "
                   "(7b: Moshi; small: 1024 wide, 8 layers; tiny: 256 wide, 2 layers; micro: 64 wide, 7B's layers)")
    p.add_argument("--precision", default=None,
                   help=f"precision(s), comma-separated: {', '.join(PRECISIONS)} (q8/q4: bf16 compute with "
                   "quantized Linear and Embedding weights); default: --dtype and --quantize")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="compute dtype of the LM")
    p.add_argument("--quantize", type=int, choices=[4, 8], default=None,
                   help="quantize Linear and Embedding weights to this many bits (default: not quantized)")
    p.add_argument("--group-size", type=int, default=None,
                   help=f"quantization group size (default: {group_size_help()})")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per implementation")
    p.add_argument("--no-mimi", action="store_true", help="skip timing Mimi encode/decode")
    p.add_argument("--no-uncompiled", action="store_true",
                   help="time only our default (compiled) LmGen, not also its uncompiled path")
    p.add_argument("--kyutai-python", default=os.environ.get("MOSHI_MLX_KYUTAI_PYTHON"),
                   help="python that imports Kyutai's moshi_mlx==0.3.0, e.g. the venv benchmarks/make_kyutai_venv.sh "
                   "builds (env MOSHI_MLX_KYUTAI_PYTHON); without it only ours is timed")
    p.add_argument("--kyutai-path", default=os.environ.get("MOSHI_MLX_KYUTAI_PATH"),
                   help="folder put on PYTHONPATH for Kyutai's process only (holding its moshi_mlx), e.g. when "
                   "--kyutai-python is this same python (env MOSHI_MLX_KYUTAI_PATH)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the results as one JSON object")
    out.add_argument("--table", action="store_true", help="print README table rows (markdown)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = configure_parser().parse_args(argv)

    def go() -> None:
        if args.precision:
            precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
            for p in precisions:
                parse_precision(p)
        else:
            quant = f"q{args.quantize}" if args.quantize else ""
            precisions = [quant if quant and args.dtype == "bf16" else "+".join(filter(None, [args.dtype, quant]))]
        configs = [c.strip() for c in args.config.split(",") if c.strip()]
        for c in configs:
            if c not in bench_configs():
                raise InvalidArgument(f"unknown bench config {c!r} (choose from {', '.join(bench_configs())})")
        if args.steps < 1 or args.rounds < 1 or args.warmup < 0:
            raise InvalidArgument("--steps and --rounds must be >= 1, --warmup >= 0")
        result = run_bench(configs, precisions, args.group_size, args.steps, args.warmup, args.rounds,
                           args.kyutai_python, args.kyutai_path, not args.no_mimi, not args.no_uncompiled)
        if args.json:
            print(json.dumps(result, indent=2))
        elif args.table:
            print(table_rows(result))
        else:
            print(text_report(result))

    run("moshi-mlx bench", go)
