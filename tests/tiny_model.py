"""A tiny random Moshi folder in Kyutai's repo layout (built once per session by the tests)."""

from __future__ import annotations

import atexit
import functools
import importlib.util
import shutil
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
    root = Path(tempfile.mkdtemp(prefix="moshi_mlx_tiny_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # about 400 MB: gone when the session ends
    return module.make_tiny_model(root / "tiny-moshi", seed=0, mimi=mimi_reference.fixture_path())
