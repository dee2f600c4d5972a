"""The 7B step on a GPU, ours against Kyutai's moshi_mlx 0.3.0: the script behind README's H200 rows.

Each measurement runs in its own process (Kyutai's package shares our import name, and separate
processes keep the peaks apart), interleaved round by round, random weights, Kyutai's default
samplers on both sides, 7B architecture. It needs only MLX (no other package of ours is imported by
Kyutai's side), so it also runs on an offline machine where MLX comes from carried wheels:

    python -m benchmarks.lmgen_7b_device KYUTAI_DIR '{"precisions": [["bfloat16", null], ["bfloat16", 4],
        ["bfloat16", 8]], "rounds": 3, "steps": 30, "warmup": 5}' > results.jsonl

Optional plan keys: "override" (config values, e.g. a smaller width to try the script), "variants"
(ours run several ways, each `[name, temporal layers a stage, depformer layer steps a stage]`, None
for whole: `models.frame.FUSED_TEMPORAL_STAGE_LAYERS` / `FUSED_DEPTH_STAGE_LAYERS`; default
`[["ours", null, null]]`; a fourth element, `{"NAME": "value"}`, sets environment variables of that
variant's process, e.g. MLX's CUDA graph sizes `MLX_MAX_OPS_PER_BUFFER` / `MLX_MAX_MB_PER_BUFFER`,
and goes into its rows as "env"). Our rows carry `tokens_sha1`, the hash of the tokens the timed steps
made from seed 0 (weights too), so variants that run the frame otherwise are seen to give the same
tokens. The variants' stages apply to the fused-kernel (GPU) frame; on a CPU every variant runs the
CPU frame.

KYUTAI_DIR holds Kyutai's `moshi_mlx` package (`benchmarks/make_kyutai_venv.sh --target DIR`). One
JSON line per (precision, round, side): median/min/p90 ms per step, the weight bytes read per step,
MLX's peak memory, the bandwidth of a plain 1 GiB matrix-vector product and the roofline.
`moshi-mlx bench --config 7b` measures the same and more; this script is the smaller one that ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(args: dict) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    side, steps, warmup = args["side"], args["steps"], args["warmup"]
    mx.random.seed(0)  # the same random weights in every process
    if side == "bandwidth":
        dtype, bits = getattr(mx, args["dtype"]), args["bits"]
        w = mx.random.normal((32768, 8192)).astype(dtype)
        x = mx.random.normal((1, 8192)).astype(dtype)
        if bits:
            from moshi_mlx.modules.quantized import quantized_product  # what our layers compute

            wq, s, b = mx.quantize(w, group_size=64, bits=bits)
            mx.eval(wq, s, b)
            nbytes = wq.nbytes + s.nbytes + b.nbytes
            product = lambda: quantized_product(x, wq, s, b, group_size=64, bits=bits)  # noqa: E731
        else:
            mx.eval(w)
            nbytes, product = w.nbytes, lambda: x @ w.T  # noqa: E731
        times = []
        for i in range(35):
            t0 = time.perf_counter()
            mx.eval(product())
            times.append(time.perf_counter() - t0)
        return {"gb_per_s": nbytes / float(np.median(times[5:])) / 1e9}
    if side == "kyutai":
        from moshi_mlx import models, utils

        model = models.Lm(models.LmConfig.from_config_dict(args["config"]))
    else:
        from moshi_mlx.config import LmConfig
        from moshi_mlx.models.lm import Lm

        model = Lm(LmConfig.from_kyutai_json(args["config"]))
    model.set_dtype(getattr(mx, args["dtype"]))
    if args["bits"]:  # as `moshi-mlx bench`: a layer whose input width 64 does not divide stays unquantized
        def quantizable(_, m: nn.Module) -> bool:
            return hasattr(m, "to_quantized") and m.weight.shape[-1] % 64 == 0

        if side == "kyutai":
            nn.quantize(model, group_size=64, bits=args["bits"], class_predicate=quantizable)
        else:
            from moshi_mlx.modules.quantized import quantize_modules

            quantize_modules(model, 64, args["bits"], quantizable)
    mx.eval(model.parameters())
    weight_bytes = sum(v.nbytes for k, v in tree_flatten(model.parameters()) if "emb" not in k.split(".")[0])
    if side == "kyutai":
        gen = models.LmGen(model=model, max_steps=warmup + steps + 5, text_sampler=utils.Sampler(temp=0.7, top_k=25),
                           audio_sampler=utils.Sampler(temp=0.8, top_k=250))
        user = mx.zeros((1, model.cfg.other_codebooks), dtype=mx.int32)

        def step() -> None:
            gen.step(user)[0].item()
            audio = gen.last_audio_tokens()
            if audio is not None:
                mx.eval(audio)
    else:
        from moshi_mlx.generate import LmGen
        from moshi_mlx.models import frame

        frame.FUSED_TEMPORAL_STAGE_LAYERS, frame.FUSED_DEPTH_STAGE_LAYERS = args.get("stages", (None, None))
        gen = LmGen(model, seed=0)
        user = mx.zeros((1, model.cfg.n_q - model.cfg.dep_q), dtype=mx.int32)
        outs = []

        def step() -> None:
            out = gen.step(user)
            mx.eval(gen.tokens if out is None else out)
            if out is not None:
                outs.append(out)

    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step()
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - t0))
    t = np.array(times)
    row = dict(median=float(np.median(t)), min=float(t.min()), p90=float(np.percentile(t, 90)),
               weight_bytes=weight_bytes, peak_gb=mx.get_peak_memory() / 1e9)
    if side != "kyutai":
        row["tokens_sha1"] = hashlib.sha1(np.stack([np.array(o) for o in outs]).tobytes()).hexdigest()
    return row


def run_side(args: dict, kyutai_dir: str, extra_env: dict | None = None) -> dict:
    """`measure(args)` in a new process, with `extra_env` added to its environment."""
    path = kyutai_dir if args["side"] == "kyutai" else ROOT
    env = dict(os.environ, **(extra_env or {}),
               PYTHONPATH=os.pathsep.join([path] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                    if p and os.path.abspath(p) != ROOT]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--measure", json.dumps(args)],
                          capture_output=True, text=True, env=env, cwd="/")
    if proc.returncode:
        raise RuntimeError(f"{args['side']} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def variant_env(rest: list) -> dict:
    """The environment variables a variant sets (its optional fourth element), as strings."""
    if len(rest) > 1 or (rest and not isinstance(rest[0], dict)):
        raise ValueError(f"after the stage sizes, expected one {{NAME: value}} object, got {rest}")
    return {str(k): str(v) for k, v in (rest[0] if rest else {}).items()}


def main() -> None:
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__)
        return
    if len(sys.argv) != 3:
        sys.exit("usage: python -m benchmarks.lmgen_7b_device KYUTAI_DIR PLAN_JSON (--help says more)")
    if sys.argv[1] == "--measure":
        print(json.dumps(measure(json.loads(sys.argv[2]))))
        return
    kyutai_dir = sys.argv[1]
    if not os.path.isdir(os.path.join(kyutai_dir, "moshi_mlx")):
        sys.exit(f"lmgen_7b_device: {kyutai_dir} holds no moshi_mlx package (benchmarks/make_kyutai_venv.sh --target DIR)")
    try:
        plan = json.loads(sys.argv[2])
    except json.JSONDecodeError as e:
        sys.exit(f"lmgen_7b_device: the plan is not JSON ({e})")
    sys.path.insert(0, ROOT)
    from moshi_mlx.config import LmConfig

    config = {**LmConfig.from_preset("moshi_7b").raw, **plan.get("override", {})}  # e.g. a smaller width to try it
    try:
        sides = [(name, {"side": "ours", "stages": [t, d]}, variant_env(env))
                 for name, t, d, *env in plan.get("variants", [["ours", None, None]])] + [("kyutai", {"side": "kyutai"}, {})]
    except (TypeError, ValueError) as e:
        sys.exit(f"lmgen_7b_device: bad \"variants\" in the plan ({e}); each is [name, T, D] or [name, T, D, {{NAME: value}}]")
    for dtype, bits in plan["precisions"]:
        base = dict(config=config, dtype=dtype, bits=bits, steps=plan["steps"], warmup=plan["warmup"])
        bandwidth = run_side({**base, "side": "bandwidth"}, kyutai_dir)["gb_per_s"]
        for r in range(plan["rounds"]):
            for name, side, env in sides if r % 2 == 0 else sides[::-1]:  # odd rounds in reverse order
                row = {**run_side({**base, **side}, kyutai_dir, env), "side": name, "round": r, "dtype": dtype,
                       "bits": bits, "bw_gbs": bandwidth, **({"env": env} if env else {})}
                row["roofline_ms"] = row["weight_bytes"] / (bandwidth * 1e9) * 1000
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
