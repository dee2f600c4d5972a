"""Shared pytest setup: deterministic seeds for MLX, NumPy and (when present) torch."""

from __future__ import annotations

import os
import random

# torch's OpenMP workers busy-wait after each op and starve the MLX tests that follow (about 10x
# slower on 2 cores); must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
