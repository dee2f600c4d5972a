"""Shared pytest setup: deterministic seeds, and `require`/`unavailable` for optional test dependencies.

Locally a missing reference package (torch, Kyutai's moshi, rustymimi) or audio tool skips the tests
that need it. With `CI=true` it fails them instead: a CI run that skipped its parity tests would
prove nothing. A CI venv that leaves something out on purpose names it in `MOSHI_MLX_TEST_ABSENT`
(comma-separated, e.g. `rustymimi`); its tests then skip, and the run fails if it is installed after all.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
from types import ModuleType
from typing import NoReturn

# torch's OpenMP workers busy-wait after each op and starve the MLX tests that follow (about 10x
# slower on 2 cores); must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import mlx.core as mx
import numpy as np
import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def expected_absent() -> set[str]:
    """What this run's venv leaves out on purpose (`MOSHI_MLX_TEST_ABSENT`)."""
    return {n.strip() for n in os.environ.get("MOSHI_MLX_TEST_ABSENT", "").split(",") if n.strip()}


def unavailable(name: str, reason: str) -> NoReturn:
    """`name` (a package or tool) is missing: skips, or fails under CI=true unless it is expected absent."""
    if in_ci() and name not in expected_absent():
        pytest.fail(f"{reason} (CI=true: a missing {name} fails the run; MOSHI_MLX_TEST_ABSENT lists "
                    f"what a CI venv leaves out on purpose)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str) -> ModuleType:
    """Imports and returns `module`, or calls `unavailable` (skip locally, fail in CI) when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        unavailable(module.split(".")[0], f"could not import {module!r}: {e}")


def pytest_configure(config: pytest.Config) -> None:
    # A venv that claims to leave a package out must really lack it, or its run proves nothing.
    present = sorted(n for n in expected_absent() if importlib.util.find_spec(n) is not None)
    if present:
        raise pytest.UsageError(f"MOSHI_MLX_TEST_ABSENT names {', '.join(present)}, but it is installed")


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
