"""Access to the committed Kyutai-MLX-layout fixtures (`tests/fixtures/make_kyutai_mlx_fixture.py`)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from moshi_mlx.models.lm import Lm

ASSETS = Path(__file__).parent / "assets" / "kyutai_mlx"
FILES = {"bf16": "model.safetensors", "q8": "model.q8.safetensors", "q4": "model.q4.safetensors"}
# (group_size, bits) the fixture script used; None: not quantized.
QUANT = {"bf16": None, "q8": (64, 8), "q4": (32, 4)}


def reference() -> dict[str, mx.array]:
    return dict(mx.load(str(ASSETS / "reference.safetensors")))


def kyutai_logits(variant: str, compute: str) -> tuple[np.ndarray, np.ndarray]:
    """Kyutai MLX's text `[B, T, V]` and audio `[B, dep_q, T, card]` logits ("bf16" or "fp32" compute)."""
    ref = reference()
    name = FILES[variant]
    return (np.array(ref[f"{name}.{compute}.text_logits"]), np.array(ref[f"{name}.{compute}.audio_logits"]))


def our_logits(model: Lm) -> tuple[np.ndarray, np.ndarray]:
    """Ours on the same teacher-forced single-token steps as the fixture script."""
    ref = reference()
    inputs, dep_inputs = ref["inputs"], ref["dep_inputs"]
    cache, dcache = model.make_cache(), model.make_depformer_cache()
    text, audio = [], []
    for t in range(inputs.shape[2]):
        hidden, text_logits = model.step(inputs[:, :, t : t + 1], cache)
        for c in dcache:
            c.reset()
        per_k = [model.depformer_step(k, dep_inputs[:, k, t], hidden, dcache) for k in range(model.cfg.dep_q)]
        text.append(text_logits[:, 0])
        audio.append(mx.stack(per_k, axis=1))
    text_all = mx.stack(text, axis=1).astype(mx.float32)
    audio_all = mx.stack(audio, axis=2).astype(mx.float32)
    return np.array(text_all), np.array(audio_all)
