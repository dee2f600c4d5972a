"""`finetune`: a whole run from a `TrainConfig` (load, data, LoRA, memory check, train, checkpoints)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from ..errors import MoshiError
from ..files import atomic_write
from ..weights.pretrained import load_pretrained
from .config import TrainConfig
from .data import FRAME_RATE, WindowDataset, mimi_identity
from .interleaver import Interleaver, num_window_frames
from .loop import StepLog, TrainResult, prepare_model, train
from .memory import available_memory, estimate, gib


class MemoryCheckError(MoshiError, MemoryError):
    """The estimated peak memory of a step exceeds what the machine has."""


def finetune(
    cfg: TrainConfig,
    resume: bool = False,
    memory_check: bool = True,
    on_step: Callable[[StepLog], None] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> TrainResult:
    """Fine-tunes `cfg.model` on `cfg.data.train_data`, writing checkpoints under `cfg.run_dir`."""
    cfg.check()
    say = on_line or (lambda s: None)
    if not cfg.data.train_data:
        raise MoshiError("no training data: set data.train_data (--data)")
    if not cfg.run_dir:
        raise MoshiError("no run folder: set run_dir (--out)")
    run_dir = Path(cfg.run_dir)
    if not resume and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        raise MoshiError(f"{run_dir}: already holds checkpoints; pass --resume to continue it or choose a new folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(run_dir / "config.json") as f:
        f.write(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    pre = load_pretrained(cfg.model)
    lm, mimi, tokenizer = pre.lm, pre.mimi, pre.tokenizer
    lcfg = lm.cfg
    interleaver = Interleaver(
        tokenizer, FRAME_RATE, text_padding=lcfg.existing_text_padding_id,
        end_of_text_padding=lcfg.existing_text_end_padding_id, zero_padding=lcfg.zero_token_id,
    )  # fmt: skip
    codebooks = (lcfg.dep_q, lcfg.n_q - lcfg.dep_q)
    common = dict(
        mimi=mimi, interleaver=interleaver, duration_sec=cfg.duration_sec, codebooks=codebooks,
        cache_dir=run_dir / "codes", mimi_id=mimi_identity(pre.files.mimi),
        on_encode=lambda i, n: say(f"encoding {i + 1}/{n}") if n > 1 and i % max(1, n // 10) == 0 else None,
    )  # fmt: skip
    train_set = WindowDataset(cfg.data.train_data, **common)
    eval_set = WindowDataset(cfg.data.eval_data, **common) if cfg.data.eval_data else None
    say(f"{len(train_set)} training windows" + (f", {len(eval_set)} eval windows" if eval_set else ""))
    extra = prepare_model(lm, cfg)
    est = estimate(lm, cfg.batch_size, num_window_frames(cfg.duration_sec), cfg.gradient_checkpointing)
    have = available_memory()
    say(f"estimated peak memory {gib(est.total)}" + (f" of {gib(have)} available" if have else ""))
    if memory_check and have is not None and est.total > have:
        raise MemoryCheckError(
            f"a step needs about {gib(est.total)} but {gib(have)} is available: lower batch_size or duration_sec, "
            "set gradient_checkpointing, or train on a quantized base (quantize 4)"
        )
    return train(lm, cfg, train_set, eval_set, run_dir, extra, resume, on_step, on_line)
