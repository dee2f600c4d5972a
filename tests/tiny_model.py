"""A tiny random Moshi folder in Kyutai's repo layout (built once per session by the tests)."""

from __future__ import annotations

import functools
import importlib.util
import tempfile
from pathlib import Path

from conftest import require

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def tiny_model_dir() -> Path:
    """LM + tokenizer + speech-fitted random Mimi, via `tests/fixtures/make_tiny_model.py` (needs torch)."""
    require("torch")
    require("moshi")
    import mimi_reference

    spec = importlib.util.spec_from_file_location("make_tiny_model", ROOT / "tests" / "fixtures" / "make_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = Path(tempfile.mkdtemp(prefix="moshi_mlx_tiny_")) / "tiny-moshi"
    return module.make_tiny_model(out, seed=0, mimi=mimi_reference.fixture_path())
