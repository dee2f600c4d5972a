"""Peak memory of a training step, estimated before training starts, and the memory there is.

The estimate counts the base weights as stored, the trainable weights with their gradient and AdamW's
two moments (fp32), the activations the backward pass keeps (per temporal and depformer layer and per
token; with gradient checkpointing only each layer's input plus one layer's full set) and the
logits. Its constants were calibrated against `mx.get_peak_memory()` on small configs (see the README);
it is an estimate, meant to refuse hopeless runs, not to predict to the megabyte.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import mlx.core as mx
from mlx.utils import tree_flatten

from ..models.lm import Lm

_ACT_BYTES = 4  # activations are kept in fp32 around norms and the loss; be conservative


@dataclass
class MemoryEstimate:
    weights: int
    trainable: int
    activations: int

    @property
    def total(self) -> int:
        return int(1.15 * (self.weights + self.trainable + self.activations))


def _hidden(t) -> int:
    ff = t.dim_feedforward
    return max(ff) if isinstance(ff, list) else ff


def _layer_activations(tokens: int, d: int, hidden: int, heads: int, ctx: int) -> int:
    return tokens * _ACT_BYTES * (16 * d + 3 * hidden + 2 * heads * ctx)


def estimate(lm: Lm, batch_size: int, frames: int, gradient_checkpointing: bool) -> MemoryEstimate:
    """Estimated peak bytes of one training step of `lm` as it is now (quantized, LoRA applied, frozen)."""
    weights = sum(v.nbytes for _, v in tree_flatten(lm.parameters()))
    trainable = sum(v.size for _, v in tree_flatten(lm.trainable_parameters())) * 4 * 3
    cfg = lm.cfg
    t = cfg.transformer
    tokens = batch_size * frames
    per_layer = _layer_activations(tokens, t.d_model, _hidden(t), t.num_heads, min(frames, t.context or frames))
    layers = [per_layer] * t.num_layers
    if cfg.dep_q > 0:
        dt = cfg.depformer
        dep_tokens = tokens * cfg.dep_q
        dep_layer = _layer_activations(dep_tokens, dt.d_model, _hidden(dt), dt.num_heads, cfg.dep_q)
        layers += [dep_layer] * dt.num_layers
    if gradient_checkpointing:
        inputs = tokens * _ACT_BYTES * t.d_model * t.num_layers
        if cfg.dep_q > 0:
            inputs += tokens * cfg.dep_q * _ACT_BYTES * cfg.depformer.d_model * cfg.depformer.num_layers
        act = inputs + max(layers)
    else:
        act = sum(layers)
    logits = tokens * (cfg.text_out_vocab + cfg.dep_q * cfg.card) * 4 * 3
    return MemoryEstimate(weights, trainable, act + logits)


def available_memory() -> int | None:
    """Bytes a training run may use: the GPU's recommended working set on a Mac, else the free RAM."""
    info = mx.device_info()
    for key in ("max_recommended_working_set_size", "memory_size"):
        if info.get(key):
            return int(info[key])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
