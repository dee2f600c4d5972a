"""Shared pytest setup: deterministic seeds for MLX, NumPy and (when present) torch."""

from __future__ import annotations

import random

import mlx.core as mx
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    mx.random.seed(0)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(0)
