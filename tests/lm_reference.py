"""Builds reference torch moshi `LMModel`s with random weights and writes them as checkpoints.

Used by the LM, generation and loss parity tests. torch/moshi are imported lazily so that a
test module can `pytest.importorskip` them first.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

# Small configs that keep the 7B's structure (RoPE, RMSNorm f32, SiLU gating, multi-linear
# depformer with weights per step, 7B-style delays), plus variants that exercise schedules,
# low-rank embeddings, GQA, LayerNorm/sin/GELU and LayerScale.
MOSHI_LIKE: dict[str, Any] = dict(
    dim=64, text_card=96, existing_text_padding_id=3, n_q=6, dep_q=3, card=40,
    num_heads=4, num_layers=2, hidden_scale=4.125, causal=True, layer_scale=None, context=12,
    max_period=10000, gating="silu", norm="rms_norm_f32", positional_embedding="rope",
    depformer_dim=32, depformer_dim_feedforward=int(4.125 * 32), depformer_num_heads=2,
    depformer_num_layers=2, depformer_layer_scale=None, depformer_multi_linear=True,
    depformer_context=3, depformer_max_period=10000, depformer_gating="silu",
    depformer_pos_emb="none", depformer_weights_per_step=True,
    delays=[0, 0, 1, 1, 0, 1, 1],
)

SCHEDULE_LOW_RANK: dict[str, Any] = {
    **MOSHI_LIKE,
    "n_q": 8, "dep_q": 4, "delays": [0, 0, 1, 1, 1, 0, 1, 1, 1],
    "depformer_weights_per_step_schedule": [0, 1, 1, 2],
    "depformer_low_rank_embeddings": 8,
    "max_period": 100000, "dim": 48, "num_heads": 3, "num_layers": 3,
}

GQA_BIAS: dict[str, Any] = {
    **MOSHI_LIKE,
    "kv_repeat": 2, "bias_proj": True, "norm": "rms_norm", "hidden_scale": 4,
    "delays": [0, 0, 2, 1, 0, 2, 1], "text_card_out": 90, "depformer_pos_emb": "rope",
}

LAYERNORM_SIN: dict[str, Any] = {
    **MOSHI_LIKE,
    "norm": "layer_norm", "gating": "none", "positional_embedding": "sin", "layer_scale": 0.1,
    "depformer_pos_emb": "sin", "depformer_gating": "gelu", "depformer_layer_scale": 0.2,
    "depformer_dim_feedforward": [40, 56, 48],
}

CONFIGS = {
    "moshi_like": MOSHI_LIKE,
    "schedule_low_rank": SCHEDULE_LOW_RANK,
    "gqa_bias": GQA_BIAS,
    "layernorm_sin": LAYERNORM_SIN,
}


def build_torch_lm(config: dict[str, Any], seed: int = 0, dtype=None):
    """A torch `LMModel` in eval mode with every parameter random (not torch's partial init)."""
    import torch
    from moshi.models.lm import LMModel

    torch.manual_seed(seed)
    kwargs = copy.deepcopy(config)
    model = LMModel(**kwargs).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[-1]))
            else:  # norms, biases, layer scales: around their init, but not trivially
                p.copy_(p + 0.2 * torch.randn(p.shape, generator=gen))
    if dtype is not None:
        model = model.to(dtype)
    return model


def published_state_dict(model) -> dict:
    """The state dict in the spelling of Kyutai's published files (`in_proj_weight`, stacked)."""
    import torch

    out = {}
    groups: dict[str, list] = {}
    for key, value in model.state_dict().items():
        for kind, new in (("in_projs", "in_proj_weight"), ("out_projs", "out_proj.weight")):
            marker = f".self_attn.{kind}."
            if marker in key:
                prefix, rest = key.split(marker)
                index = int(rest.split(".")[0])
                groups.setdefault(f"{prefix}.self_attn.{new}", []).append((index, value))
                break
        else:
            out[key] = value
    for key, parts in groups.items():
        out[key] = torch.cat([v for _, v in sorted(parts, key=lambda p: p[0])], dim=0)
    return out


def save_checkpoint(model, path: Path, spelling: str) -> Path:
    """Writes `model` as safetensors in the `published` or `state_dict` spelling."""
    from safetensors.torch import save_file

    if spelling == "published":
        state = published_state_dict(model)
    elif spelling == "state_dict":
        state = dict(model.state_dict())
    else:
        raise ValueError(spelling)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def random_codes(config: dict[str, Any], batch: int, steps: int, seed: int = 0) -> np.ndarray:
    """Undelayed `[B, 1 + n_q, T]` codes: text ids below text_card, audio below card."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, config["card"], size=(batch, 1 + config["n_q"], steps))
    codes[:, 0] = rng.integers(0, config["text_card"], size=(batch, steps))
    return codes.astype(np.int64)
