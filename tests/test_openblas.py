"""The CPU frame under OpenBLAS (the README's advice for Linux CPUs): its fp32 products round and
sum differently from MLX's bundled BLAS (fused multiply-adds, another order per layout), so the
frame's checks must turn its matrix RoPE and `[in, out]` layout off and stay equal to op-by-op."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import unavailable

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
from moshi_mlx.modules.attention import rope_product_is_exact
assert "openblas" in open("/proc/self/maps").read(), "OpenBLAS is not loaded"
print(rope_product_is_exact(16, 10000.0, 3, 2))
"""


def openblas() -> str:
    """Debian's OpenBLAS (`libopenblas0-pthread`), else `unavailable`."""
    path = Path(f"/usr/lib/{platform.machine()}-linux-gnu/openblas-pthread/libopenblas.so.0")
    if sys.platform != "linux" or not path.exists():
        unavailable("openblas", f"no OpenBLAS at {path} (Debian: apt-get install libopenblas0-pthread)")
    return str(path)


@pytest.mark.slow  # reruns the frame's exactness tests in a subprocess: about 30 s
def test_cpu_frame_stays_exact_under_openblas():
    env = {**os.environ, "LD_PRELOAD": openblas(), "OPENBLAS_NUM_THREADS": "2"}
    probe = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["False"]  # it rounds differently: the checks below are not vacuous
    tests = ["tests/test_frame.py::test_compiled_frame_equals_op_by_op_through_growth_and_wrap",
             "tests/test_frame.py::test_cpu_relayout_keeps_every_weight_and_frees_the_old_buffers",
             "tests/test_attention.py::test_rope_rotations_equal_fast_rope"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                         env=env, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
