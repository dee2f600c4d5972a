"""Peak memory of a LoRA training step (`mx.get_peak_memory`) on a small Moshi-shaped config, per batch
size and window length, beside `moshi_mlx.train.memory.estimate`; then the estimate for the 7B.

    python -m benchmarks.finetune_memory [--dim 256 --layers 4] [--bits 4]

The 7B lines are the estimate's extrapolation (not a measurement): the same formula on the 7B config.
"""

from __future__ import annotations

import argparse
import json
import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from moshi_mlx.config import LmConfig
from moshi_mlx.models.lm import Lm
from moshi_mlx.train.config import TrainConfig
from moshi_mlx.train.loop import checkpointed_layers, prepare_model
from moshi_mlx.train.memory import estimate

GiB = 2**30


def small_config(dim: int, layers: int) -> dict:
    return dict(
        dim=dim,
        text_card=32000,
        existing_text_padding_id=3,
        n_q=16,
        dep_q=8,
        card=2048,
        num_heads=max(1, dim // 64),
        num_layers=layers,
        hidden_scale=4.125,
        causal=True,
        context=3000,
        max_period=10000,
        gating="silu",
        norm="rms_norm_f32",
        positional_embedding="rope",
        depformer_dim=dim // 2,
        depformer_dim_feedforward=int(4.125 * dim // 2),
        depformer_num_heads=max(1, dim // 128),
        depformer_num_layers=2,
        depformer_multi_linear=True,
        depformer_weights_per_step=True,
        depformer_pos_emb="none",
        depformer_gating="silu",
        delays=[0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
    )


def measure(raw: dict, batch: int, seconds: float, ckpt: bool, bits: int, rank: int) -> tuple[int, int, float]:
    mx.random.seed(0)
    lm = Lm(LmConfig.from_kyutai_json(raw))
    cfg = TrainConfig(quantize=bits, gradient_checkpointing=ckpt)
    cfg.lora.rank = rank
    prepare_model(lm, cfg)
    mx.eval(lm.parameters())
    frames = int(seconds * 12.5)
    est = estimate(lm, batch, frames, ckpt).total
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2048, size=(batch, 17, frames))
    codes[:, 0] = rng.integers(0, 32000, size=(batch, frames))
    vg = nn.value_and_grad(lm, lambda m, c: m.loss(c, 100.0, 0.5).total)
    mx.clear_cache()
    mx.reset_peak_memory()
    t = time.perf_counter()
    with checkpointed_layers(ckpt):
        for _ in range(2):
            loss, grads = vg(lm, mx.array(codes))
            mx.eval(loss, grads)
    dt = (time.perf_counter() - t) / 2
    return mx.get_peak_memory(), est, dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batches", default="1,2,4")
    p.add_argument("--seconds", default="5,10,20")
    args = p.parse_args()
    raw = small_config(args.dim, args.layers)
    print(
        f"small config: dim {args.dim}, {args.layers} layers, depformer {args.dim // 2} x 2, q{args.bits} base, "
        f"LoRA rank {args.rank}, text vocabulary 32000"
    )
    print("batch  seconds  ckpt   measured GiB  estimate GiB  s/step")
    for ckpt in (False, True):
        for b in map(int, args.batches.split(",")):
            for s in map(float, args.seconds.split(",")):
                peak, est, dt = measure(raw, b, s, ckpt, args.bits, args.rank)
                print(f"{b:5d}  {s:7.0f}  {str(ckpt):5}  {peak / GiB:12.3f}  {est / GiB:12.3f}  {dt:6.2f}")
    with open(__import__("moshi_mlx").__path__[0] + "/configs/moshi_7b_202409.json") as f:
        big = json.load(f)
    print("\n7B (moshiko), q4 base, LoRA rank 16, EXTRAPOLATED by the estimate (not measured):")
    lm = Lm(LmConfig.from_kyutai_json(big))  # lazy: never evaluated, nothing allocated
    cfg = TrainConfig(quantize=4)
    cfg.lora.rank = 16
    prepare_model(lm, cfg)
    print("batch  seconds  ckpt   estimate GiB")
    for ckpt in (True, False):
        for b in (1, 2, 4, 8):
            for s in (10, 30, 60, 100):
                print(f"{b:5d}  {s:7d}  {str(ckpt):5}  {estimate(lm, b, int(s * 12.5), ckpt).total / GiB:12.2f}")


if __name__ == "__main__":
    main()
