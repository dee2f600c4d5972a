"""The fine-tuning configuration, with moshi-finetune's names (`finetune/args.py`, `example/moshi_7B.yaml`).

Values come from the defaults below, then a YAML file, then command-line options (`--lora.rank 16`);
nested keys are dotted. Unknown keys and wrong types are one-line errors naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MoshiError


class TrainConfigError(MoshiError, ValueError):
    """A configuration key or value that cannot be used."""


@dataclass
class LoraConfig:
    enable: bool = True  # False with full_finetuning
    rank: int = 64
    scaling: float = 2.0
    ft_embed: bool = False


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.1
    pct_start: float = 0.05


@dataclass
class DataConfig:
    train_data: str = ""
    eval_data: str = ""
    shuffle: bool = True


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    run_dir: str = ""
    model: str = "kyutai/moshiko-pytorch-bf16"
    first_codebook_weight_multiplier: float = 100.0
    text_padding_weight: float = 0.5
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    duration_sec: float = 10.0
    batch_size: int = 1
    max_norm: float = 1.0
    max_steps: int = 100
    log_freq: int = 1
    ckpt_freq: int = 0
    num_ckpt_keep: int = 3
    eval_freq: int = 0
    gradient_checkpointing: bool = True
    lora: LoraConfig = field(default_factory=LoraConfig)
    full_finetuning: bool = False
    quantize: int = 0
    param_dtype: str = "bfloat16"

    def check(self) -> TrainConfig:
        """Raises a TrainConfigError for values that cannot train; returns self."""
        positive = {
            "batch_size": self.batch_size, "max_steps": self.max_steps, "duration_sec": self.duration_sec,
            "optim.lr": self.optim.lr, "log_freq": self.log_freq, "num_ckpt_keep": self.num_ckpt_keep,
        }  # fmt: skip
        for key, value in positive.items():
            if not value > 0:
                raise TrainConfigError(f"{key} must be positive, got {value}")
        if not 0 < self.optim.pct_start < 1:
            raise TrainConfigError(f"optim.pct_start must be between 0 and 1, got {self.optim.pct_start}")
        if self.full_finetuning == self.lora.enable:
            raise TrainConfigError("set exactly one of full_finetuning and lora.enable (as moshi-finetune)")
        if self.lora.enable and (self.lora.rank <= 0 or self.lora.scaling <= 0):
            raise TrainConfigError(
                f"lora.rank and lora.scaling must be positive, got {self.lora.rank}, {self.lora.scaling}"
            )
        if self.quantize not in (0, 4, 8):
            raise TrainConfigError(f"quantize must be 0 (off), 4 or 8 bits, got {self.quantize}")
        if self.quantize and self.full_finetuning:
            raise TrainConfigError("quantize (QLoRA) needs LoRA; full fine-tuning trains float weights")
        if self.param_dtype not in ("bfloat16", "float16", "float32"):
            raise TrainConfigError(f"param_dtype must be bfloat16, float16 or float32, got {self.param_dtype!r}")
        return self


HELP: dict[str, str] = {
    "data.train_data": 'training dataset: a .jsonl of {"path": wav, "duration": s} lines (moshi-finetune format)',
    "data.eval_data": "evaluation dataset (same format); eval loss every eval_freq steps",
    "data.shuffle": "shuffle the training windows each epoch",
    "run_dir": "output folder: checkpoints/checkpoint_NNNNNN/, the codes cache, train.log",
    "model": "base model: Hugging Face repo, local folder or LM weights file (as --model of chat)",
    "first_codebook_weight_multiplier": "loss weight of the first (semantic) audio codebook",
    "text_padding_weight": "loss weight of PAD/EPAD text targets (most of the text stream)",
    "optim.lr": "peak learning rate of the one-cycle schedule (moshi-finetune recommends 2e-6 for the 7B)",
    "optim.weight_decay": "AdamW weight decay",
    "optim.pct_start": "fraction of max_steps spent warming the learning rate up (torch OneCycleLR pct_start)",
    "seed": "seed of LoRA initialisation and data order",
    "duration_sec": "window length in seconds (12.5 frames per second)",
    "batch_size": "windows per step",
    "max_norm": "gradient clipping norm",
    "max_steps": "training steps",
    "log_freq": "steps between log lines",
    "ckpt_freq": "steps between checkpoints (0: only the last step)",
    "num_ckpt_keep": "checkpoints kept (older ones are deleted)",
    "eval_freq": "steps between evaluations (0: only after the last step, when eval data is given)",
    "gradient_checkpointing": "recompute each transformer layer in the backward pass (less memory, ~30%% slower)",
    "lora.enable": "train LoRA adapters (the base stays frozen)",
    "lora.rank": "LoRA rank",
    "lora.scaling": "LoRA scaling (the update is scaling * B @ A)",
    "lora.ft_embed": "also train the embedding tables fully (saved in the adapter file)",
    "full_finetuning": "train every weight (set lora.enable false)",
    "quantize": "QLoRA: quantize the frozen base to 4 or 8 bits first (0: keep its precision)",
    "param_dtype": "dtype of the frozen base weights (bfloat16, float16, float32)",
}


def flat_fields(cfg: Any = None, prefix: str = "") -> dict[str, Any]:
    """`{"optim.lr": 1e-4, ...}`: every leaf of a config (default: TrainConfig()) by dotted key."""
    cfg = TrainConfig() if cfg is None else cfg
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flat_fields(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, str):
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise TrainConfigError(f"{key}: expected a {type(default).__name__}, got {value!r}")


def set_value(cfg: TrainConfig, key: str, value: Any) -> None:
    """Sets dotted `key` of `cfg` to `value` (coerced to the field's type)."""
    defaults = flat_fields()
    if key not in defaults:
        raise TrainConfigError(f"unknown configuration key {key!r}")
    *parents, leaf = key.split(".")
    target: Any = cfg
    for p in parents:
        target = getattr(target, p)
    setattr(target, leaf, _coerce(key, value, defaults[key]))


# moshi-finetune keys that have no meaning here and are accepted so their YAML files load unchanged.
IGNORED_KEYS = ("moshi_paths", "wandb", "do_eval", "do_ckpt", "save_adapters", "num_microbatches", "overwrite_run_dir")


def load_yaml(path: str | Path, cfg: TrainConfig | None = None) -> TrainConfig:
    """`cfg` (default: TrainConfig()) updated from a YAML file."""
    try:
        import yaml
    except ImportError as e:
        raise TrainConfigError("reading a YAML config needs PyYAML: pip install pyyaml") from e
    cfg = cfg or TrainConfig()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise TrainConfigError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise TrainConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path}: expected a mapping of configuration keys")

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if not prefix and k in IGNORED_KEYS:
                continue
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                try:
                    set_value(cfg, key, v)
                except TrainConfigError as e:
                    raise TrainConfigError(f"{path}: {e}") from None

    walk(data, "")
    return cfg
