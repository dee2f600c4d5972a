"""The training loop: LoRA / QLoRA / full fine-tuning of an `Lm` with moshi-finetune's recipe.

AdamW (betas 0.9/0.95, eps 1e-8) under torch's `OneCycleLR` (cosine, div_factor 25, final_div_factor
1e4), gradient clipping at `max_norm`, the loss of `Lm.loss` with `first_codebook_weight_multiplier`
and `text_padding_weight`. Data order is a function of (seed, step), so `--resume` continues exactly.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from ..models.lm import Lm, ScaledEmbedding
from ..modules.lora import apply_lora, lora_modules
from ..modules.transformer import TransformerLayer
from ..weights.quantize import quantize_lm
from .checkpoint import checkpoints, clean_partial, load_training_state, save_checkpoint
from .config import TrainConfig
from .data import WindowDataset


def one_cycle(max_lr: float, total: int, pct_start: float) -> Callable[[mx.array], mx.array]:
    """torch `OneCycleLR(max_lr, total_steps=total, pct_start)` with its defaults, as a function of the
    optimizer step (0 for the first update)."""
    initial, final = max_lr / 25.0, max_lr / 25.0 / 1e4
    warm_end = float(pct_start * total) - 1.0
    end = float(total - 1)

    def anneal(start: float, stop: float, pct: mx.array) -> mx.array:
        return stop + (start - stop) / 2.0 * (mx.cos(math.pi * pct) + 1.0)

    def schedule(step: mx.array) -> mx.array:
        s = mx.array(step, dtype=mx.float32)
        up = anneal(initial, max_lr, mx.clip(s / max(warm_end, 1e-9), 0.0, 1.0))
        down = anneal(max_lr, final, mx.clip((s - warm_end) / max(end - warm_end, 1e-9), 0.0, 1.0))
        return mx.where(s <= warm_end, up, down)

    return schedule


@contextlib.contextmanager
def checkpointed_layers(enabled: bool) -> Iterator[None]:
    """While active, every `TransformerLayer` called without a cache recomputes its activations in
    the backward pass (`mx.checkpoint`), as mlx-lm's `grad_checkpoint`."""
    if not enabled:
        yield
        return
    original = TransformerLayer.__call__

    def call(layer: TransformerLayer, x: mx.array, *args, **kwargs) -> mx.array:
        if any(a is not None for a in (*args, *kwargs.values())):  # a cache (streaming) or other inputs
            return original(layer, x, *args, **kwargs)

        def inner(params, x):
            layer.update(params)
            return original(layer, x)

        return mx.checkpoint(inner)(layer.trainable_parameters(), x)

    TransformerLayer.__call__ = call
    try:
        yield
    finally:
        TransformerLayer.__call__ = original


def prepare_model(lm: Lm, cfg: TrainConfig) -> tuple[str, ...]:
    """Casts/quantizes the base, adds LoRA and freezes what does not train; returns the names of the
    non-LoRA parameters that train with LoRA (`lora.ft_embed`)."""
    lm.set_dtype(getattr(mx, cfg.param_dtype))
    if cfg.quantize:
        quantize_lm(lm, cfg.quantize)
    if cfg.full_finetuning:
        lm.unfreeze()
        return ()
    mx.random.seed(cfg.seed)
    apply_lora(lm, cfg.lora.rank, cfg.lora.scaling)
    lm.freeze()
    for m in lora_modules(lm).values():
        m.lora_A.unfreeze()
        m.lora_B.unfreeze()
    extra = []
    if cfg.lora.ft_embed:
        for path, m in lm.named_modules():
            if type(m) is ScaledEmbedding:
                m.unfreeze(recurse=False, keys=["weight"])
                extra.append(f"{path}.weight")
    return tuple(extra)


def batch_indices(n: int, batch_size: int, step: int, seed: int, shuffle: bool) -> list[int]:
    """The dataset indices of training step `step` (0-based): epochs of a (seeded) permutation."""
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(pos, n)
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        out.append(int(order[i]))
    return out


@dataclass
class StepLog:
    step: int
    loss: float
    text_loss: float
    audio_loss: float
    lr: float
    tokens_per_s: float
    peak_memory: int
    eval_loss: float | None = None


@dataclass
class TrainResult:
    steps: int
    logs: list[StepLog] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)


def evaluate(lm: Lm, data: WindowDataset, cfg: TrainConfig) -> float:
    """Mean loss over every window of `data` (batches of `batch_size`)."""
    total, count = 0.0, 0
    for i in range(0, len(data), cfg.batch_size):
        idx = list(range(i, min(i + cfg.batch_size, len(data))))
        out = lm.loss(mx.array(data.batch(idx)), cfg.first_codebook_weight_multiplier, cfg.text_padding_weight)
        total += float(out.total) * len(idx)
        count += len(idx)
    return total / max(count, 1)


def train(
    lm: Lm,
    cfg: TrainConfig,
    train_set: WindowDataset,
    eval_set: WindowDataset | None,
    run_dir: Path,
    extra: tuple[str, ...] = (),
    resume: bool = False,
    on_step: Callable[[StepLog], None] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> TrainResult:
    """Trains the prepared `lm` (see `prepare_model`) for `cfg.max_steps` steps; returns the logs."""
    say = on_line or (lambda s: None)
    schedule = one_cycle(cfg.optim.lr, cfg.max_steps, cfg.optim.pct_start)
    optimizer = optim.AdamW(
        learning_rate=schedule,
        betas=[0.9, 0.95], eps=1e-8, weight_decay=cfg.optim.weight_decay,
    )  # fmt: skip
    clean_partial(run_dir)
    start = 0
    if resume:
        found = checkpoints(run_dir)
        if found:
            start = load_training_state(found[-1][1], lm, optimizer)
            say(f"resumed from {found[-1][1]} (step {start})")
        else:
            say(f"no checkpoint in {run_dir}/checkpoints: starting from step 0")
    fcw, tpw = cfg.first_codebook_weight_multiplier, cfg.text_padding_weight

    def loss_fn(model: Lm, codes: mx.array):
        out = model.loss(codes, fcw, tpw)
        return out.total, (out.text, out.audio)

    value_and_grad = nn.value_and_grad(lm, loss_fn)
    result = TrainResult(steps=start)
    tokens_per_step = cfg.batch_size * train_set.items[0].shape[-1] * (1 + lm.cfg.dep_q)
    ckpt_every = cfg.ckpt_freq if cfg.ckpt_freq > 0 else cfg.max_steps
    eval_every = cfg.eval_freq if cfg.eval_freq > 0 else cfg.max_steps
    last = time.perf_counter()
    with checkpointed_layers(cfg.gradient_checkpointing):
        for step in range(start, cfg.max_steps):
            lm.train()
            idx = batch_indices(len(train_set), cfg.batch_size, step, cfg.seed, cfg.data.shuffle)
            codes = mx.array(train_set.batch(idx))
            (loss, (text, audio)), grads = value_and_grad(lm, codes)
            grads, _ = optim.clip_grad_norm(grads, cfg.max_norm)
            lr = schedule(mx.array(step))
            optimizer.update(lm, grads)
            mx.eval(lm.trainable_parameters(), optimizer.state, loss, text, audio)
            now = time.perf_counter()
            done = step + 1
            log = StepLog(
                done, float(loss), float(text), float(audio), float(lr),
                tokens_per_step / max(now - last, 1e-9), mx.get_peak_memory(),
            )  # fmt: skip
            last = now
            if not math.isfinite(log.loss):
                raise FloatingPointError(f"step {done}: the loss is {log.loss}; lower optim.lr")
            if eval_set is not None and (done % eval_every == 0 or done == cfg.max_steps):
                lm.eval()
                log.eval_loss = evaluate(lm, eval_set, cfg)
                result.evals.append((done, log.eval_loss))
                last = time.perf_counter()
            result.logs.append(log)
            result.steps = done
            if on_step is not None:
                on_step(log)
            if done % ckpt_every == 0 or done == cfg.max_steps:
                path = save_checkpoint(run_dir, done, lm, optimizer, cfg.full_finetuning, extra, cfg.num_ckpt_keep)
                result.checkpoints.append(path)
                say(f"checkpoint {path}")
                last = time.perf_counter()
    lm.eval()
    return result
