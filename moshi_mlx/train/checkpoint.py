"""Training checkpoints, laid out as moshi-finetune's and written atomically.

    RUN_DIR/checkpoints/checkpoint_000100/
        consolidated/lora.safetensors + config.json        (LoRA: the adapter, `--adapter` loads it)
        consolidated/consolidated.safetensors + config.json (full fine-tuning: the whole LM, torch layout)
        training_state/optimizer.safetensors, trainable.safetensors, state.json   (for --resume)

A checkpoint is assembled in a hidden folder beside its final name and renamed when complete, so an
interrupted save (Ctrl-C, a full disk) leaves no checkpoint folder that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map_with_path

from ..files import normal_mode
from ..models.lm import Lm
from ..weights.adapters import save_adapters
from ..weights.export_torch import export_kyutai_torch, kyutai_config, write_safetensors

_NAME = re.compile(r"^checkpoint_(\d{6,})$")
STATE = "training_state"
FULL_WEIGHTS = "consolidated.safetensors"


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and (p / STATE / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(
    run_dir: Path, step: int, model: Lm, optimizer: optim.Optimizer, full: bool, extra: tuple[str, ...], keep: int
) -> Path:
    """Writes checkpoint `step` and deletes all but the newest `keep`; returns its folder."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint_{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        cons = tmp / "consolidated"
        if full:
            cons.mkdir()
            write_safetensors(cons / FULL_WEIGHTS, export_kyutai_torch(model), {"format": "pt"})
            (cons / "config.json").write_text(json.dumps(kyutai_config(model), indent=2) + "\n")
        else:
            save_adapters(model, cons, extra)
        state = tmp / STATE
        state.mkdir()
        write_safetensors(state / "trainable.safetensors", dict(tree_flatten(model.trainable_parameters())))
        opt = {k: v for k, v in tree_flatten(optimizer.state) if isinstance(v, mx.array)}
        write_safetensors(state / "optimizer.safetensors", opt)
        (state / "state.json").write_text(json.dumps({"step": step}) + "\n")
        for d in (tmp, cons, state):
            os.chmod(d, normal_mode(directory=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_state(folder: Path, model: nn.Module, optimizer: optim.Optimizer) -> int:
    """Restores trainable weights and optimizer state from checkpoint `folder`; returns its step."""
    state = folder / STATE
    trainable = mx.load(str(state / "trainable.safetensors"))
    expected = dict(tree_flatten(model.trainable_parameters()))
    if set(trainable) != set(expected):
        missing = sorted(set(expected) - set(trainable))[:3]
        raise ValueError(
            f"{folder}: the checkpoint's trainable weights do not match this configuration (e.g. {missing})"
        )
    model.load_weights(list(trainable.items()), strict=False)
    opt_flat: dict[str, Any] = mx.load(str(state / "optimizer.safetensors"))
    optimizer.init(model.trainable_parameters())
    current = {k for k, v in tree_flatten(optimizer.state) if isinstance(v, mx.array)}
    if current != set(opt_flat):
        raise ValueError(f"{folder}: the checkpoint's optimizer state does not match this configuration")
    optimizer.state = tree_map_with_path(lambda path, v: opt_flat.get(path, v), optimizer.state)
    step = int(json.loads((state / "state.json").read_text())["step"])
    mx.eval(model.parameters(), optimizer.state)
    return step


def clean_partial(run_dir: Path) -> None:
    """Removes hidden folders an interrupted save left behind."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".checkpoint_") and ".tmp-" in p.name:
                shutil.rmtree(p, ignore_errors=True)
