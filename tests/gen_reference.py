"""Helpers for the generation, loss and Helium tests: extra configs and torch reference runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from lm_reference import CONFIGS, build_torch_lm, save_checkpoint

from moshi_mlx.config import LmConfig
from moshi_mlx.models.lm import Lm
from moshi_mlx.weights.kyutai_torch import load_lm_weights

# 7B-style delays ([0] text, [0, 1, ...] Moshi audio, [0, 1, ...] user audio) with a
# smaller ring than the parity configs so that it wraps many times in 200 steps.
MOSHI_7B_LIKE: dict[str, Any] = {
    **CONFIGS["moshi_like"],
    "n_q": 8, "dep_q": 4, "delays": [0, 0, 1, 1, 1, 0, 1, 1, 1], "context": 8,
}
# Text-only Helium: no audio streams, no depformer.
HELIUM_LIKE: dict[str, Any] = {**CONFIGS["moshi_like"], "n_q": 0, "dep_q": 0, "delays": [0], "context": 8}

GEN_CONFIGS = {
    "moshi_like_ctx8": {**CONFIGS["moshi_like"], "context": 8},
    "moshi_7b_like": MOSHI_7B_LIKE,
    "gqa_delay2_ctx5": {**CONFIGS["gqa_bias"], "context": 5},
    "schedule_low_rank": CONFIGS["schedule_low_rank"],
}


def torch_and_ours(config: dict[str, Any], tmp_path: Path, seed: int = 0) -> tuple[Any, Lm]:
    """A random torch `LMModel` and our `Lm` loaded from its published-spelling checkpoint."""
    ref = build_torch_lm(config, seed=seed)
    path = save_checkpoint(ref, tmp_path / "lm.safetensors", "published")
    ours = load_lm_weights(Lm(LmConfig.from_kyutai_json(config)), path)
    return ref, ours


def top2_gap(logits: np.ndarray) -> np.ndarray:
    """Difference between the largest and second largest logit along the last axis."""
    part = np.sort(logits, axis=-1)
    return part[..., -1] - part[..., -2]


def torch_greedy_stream(ref, user: np.ndarray) -> tuple[list[np.ndarray | None], float]:
    """torch `LMGen(use_sampling=False)` over user codes `[B, n_user, T]`.

    Returns the per-step outputs (`[B, 1 + dep_q]` or None) and the smallest top-1/top-2
    logit gap of any token it sampled (how close the run came to an argmax tie).
    """
    import torch
    from moshi.models.lm import LMGen
    from moshi.utils.compile import no_compile

    gaps: list[float] = []
    forward_depformer = ref.forward_depformer

    def recording_depformer(*args, **kwargs):
        logits = forward_depformer(*args, **kwargs)
        gaps.append(float(top2_gap(logits.float().numpy()).min()))
        return logits

    def on_text_logits(logits):
        gaps.append(float(top2_gap(logits.float().numpy()).min()))

    B, _, T = user.shape
    gen = LMGen(ref, use_sampling=False, on_text_logits_hook=on_text_logits)
    ref.forward_depformer = recording_depformer
    outs: list[np.ndarray | None] = []
    try:
        with no_compile(), torch.no_grad(), gen.streaming(B):
            for t in range(T):
                out = gen.step(torch.from_numpy(user[:, :, t : t + 1]))
                outs.append(None if out is None else out[:, :, 0].numpy())
    finally:
        del ref.forward_depformer
    return outs, min(gaps)
