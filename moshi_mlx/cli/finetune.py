"""`moshi-mlx finetune`: LoRA / QLoRA / full fine-tuning on a moshi-finetune dataset."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from ..train.config import HELP, TrainConfig, flat_fields, load_yaml, set_value
from .common import ArgumentParser, run

PROG = "moshi-mlx finetune"

DESCRIPTION = """\
Fine-tune Moshi on your own stereo dialogues (moshi-finetune's dataset format): LoRA adapters on every
Linear of the temporal transformer and the depformer (torch moshi's replace_all_linear_with_lora), QLoRA
on a 4/8-bit base (--quantize 4), or full fine-tuning. Settings use moshi-finetune's names and come from
the defaults, then --config YAML (moshi-finetune's example/moshi_7B.yaml loads as is), then options.

dataset: a .jsonl of {"path": "a.wav", "duration": 24.5} lines (paths relative to the jsonl's folder);
each wav stereo (left = Moshi, right = the user) with a.json beside it:
{"alignments": [["Hello", [0.42, 0.71], "SPEAKER_MAIN"], ...]} (word, [start, end] in seconds, speaker;
SPEAKER_MAIN is Moshi's side, the only one moshi-finetune puts in the text stream).

output: RUN_DIR/checkpoints/checkpoint_NNNNNN/consolidated/ (lora.safetensors + config.json, use it with
--adapter on chat/run/serve, `moshi-mlx fuse`, or Kyutai's torch server), the codes cache RUN_DIR/codes/."""

EPILOG = """\
examples:
  moshi-mlx finetune --model kyutai/moshiko-pytorch-bf16 --data data/train.jsonl --out runs/mine \\
      --quantize 4 --lora.rank 16 --duration_sec 30 --max_steps 2000 --optim.lr 2e-6
  moshi-mlx finetune --config moshi_7B.yaml --out runs/mine --resume      # continue after Ctrl-C
  moshi-mlx chat --adapter runs/mine/checkpoints/checkpoint_002000"""


def configure_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--config", default=None, help="YAML file of settings (moshi-finetune's keys)")
    parser.add_argument("--data", default=None, help="training .jsonl (same as --data.train_data)")
    parser.add_argument("--eval-data", default=None, help="evaluation .jsonl (same as --data.eval_data)")
    parser.add_argument("--out", default=None, help="run folder (same as --run_dir)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's newest checkpoint")
    parser.add_argument(
        "--skip-memory-check", action="store_true",
        help="train even when the estimated peak memory exceeds the memory available",
    )  # fmt: skip
    g = parser.add_argument_group("settings (moshi-finetune's names; defaults shown are before --config)")
    for key, default in flat_fields().items():
        if key in ("data.train_data", "data.eval_data", "run_dir"):
            continue
        g.add_argument(f"--{key}", dest=f"cfg:{key}", default=None, metavar=type(default).__name__.upper(),
                       help=f"{HELP.get(key, key)} (default: {default!r})")  # fmt: skip
    return parser


def build_config(args) -> TrainConfig:
    """Defaults, then `--config`, then options."""
    cfg = load_yaml(args.config) if args.config else TrainConfig()
    for name, value in vars(args).items():
        if name.startswith("cfg:") and value is not None:
            set_value(cfg, name[4:], value)
    for key, value in (("data.train_data", args.data), ("data.eval_data", args.eval_data), ("run_dir", args.out)):
        if value is not None:
            set_value(cfg, key, value)
    return cfg.check()


class TrainBar:
    """`[####....] 120/2000 steps · loss 5.21 · 8.1k tok/s · 3.2 GiB · ETA 1:02:03` on stderr."""

    def __init__(self, total: int, stream: TextIO | None = None):
        self.total, self.start_step = total, None
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.tty = self.stream.isatty()

    def update(self, log) -> None:
        if self.start_step is None:  # the first step of this process (a resumed run starts later)
            self.start_step = log.step - 1
        done = log.step - self.start_step
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - log.step)
        h, rem = divmod(int(eta), 3600)
        clock = f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"
        stats = (
            f" {log.step}/{self.total} steps · loss {log.loss:.3f} · {log.tokens_per_s / 1000:.1f}k tok/s"
            f" · {log.peak_memory / 2**30:.2f} GiB · ETA {clock}"
        )
        if log.eval_loss is not None:
            self.line(f"step {log.step}: eval loss {log.eval_loss:.4f}")
        if not self.tty:
            return
        width = max(10, min(30, shutil.get_terminal_size().columns - len(stats) - 3))
        filled = width * log.step // max(1, self.total)
        self.stream.write(f"\r\x1b[K[{'#' * filled}{'.' * (width - filled)}]{stats}")
        self.stream.flush()

    def line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        self.stream.flush()


def main(argv: list[str] | None = None) -> None:
    args = configure_parser().parse_args(argv)

    def go() -> None:
        from ..train.finetune import finetune

        cfg = build_config(args)
        bar = TrainBar(cfg.max_steps)
        logs = []

        def on_step(log) -> None:
            logs.append(log)
            if log.step % cfg.log_freq == 0 and not bar.tty:
                bar.line(f"step {log.step}: loss {log.loss:.4f} (text {log.text_loss:.4f}, audio {log.audio_loss:.4f})"
                         f" lr {log.lr:.2e} {log.tokens_per_s:.0f} tok/s peak {log.peak_memory / 2**30:.2f} GiB")  # fmt: skip
            bar.update(log)

        result = finetune(cfg, args.resume, not args.skip_memory_check, on_step, bar.line)
        if result.checkpoints:
            bar.line(f"done: {result.steps} steps; last checkpoint {result.checkpoints[-1]}")
        else:
            bar.line(f"nothing to do: the run is already at step {result.steps}")

    run(PROG, go)


if __name__ == "__main__":
    main()
