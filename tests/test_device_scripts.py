"""The scripts a session with a GPU machine runs (`benchmarks/device_prepare.sh` here,
`benchmarks/lmgen_7b_device.py` there): such a session has minutes of device time and none to debug
them, so what can run on a CPU is checked here. No timing is asserted."""

from __future__ import annotations

import os
import subprocess

import pytest

from benchmarks import lmgen_7b_device
from moshi_mlx.config import LmConfig
from moshi_mlx.models import frame

ROOT = lmgen_7b_device.ROOT
PREPARE = os.path.join(ROOT, "benchmarks", "device_prepare.sh")
TINY = {"dim": 64, "num_layers": 2, "num_heads": 4, "depformer_dim": 64, "depformer_num_layers": 2,
        "depformer_num_heads": 4, "hidden_scale": 4.0, "depformer_dim_feedforward": 256, "text_card": 1000,
        "card": 256}


@pytest.fixture
def stage_constants(monkeypatch):
    """`measure` sets the fused frame's stage sizes; restored after the test."""
    monkeypatch.setattr(frame, "FUSED_TEMPORAL_STAGE_LAYERS", None)
    monkeypatch.setattr(frame, "FUSED_DEPTH_STAGE_LAYERS", None)


@pytest.mark.parametrize("bits", [None, 8])
def test_our_side_measures_and_hashes_the_same_tokens_from_seed_0(stage_constants, bits):
    config = {**LmConfig.from_preset("moshi_7b").raw, **TINY}
    args = dict(side="ours", config=config, dtype="bfloat16", bits=bits, steps=3, warmup=2)
    first = lmgen_7b_device.measure({**args, "stages": [None, None]})
    staged = lmgen_7b_device.measure({**args, "stages": [1, 3]})
    assert (frame.FUSED_TEMPORAL_STAGE_LAYERS, frame.FUSED_DEPTH_STAGE_LAYERS) == (1, 3)
    for row in (first, staged):
        assert set(row) == {"median", "min", "p90", "weight_bytes", "peak_gb", "tokens_sha1"}
        assert 0 < row["min"] <= row["median"] <= row["p90"]
    assert first["weight_bytes"] == staged["weight_bytes"] > 0
    # Seed 0 in every process: the same weights and the same tokens, whatever the stages.
    assert first["tokens_sha1"] == staged["tokens_sha1"]


def prepare(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLX_VERSION="0.32.4")  # the checks below stop before anything is fetched
    return subprocess.run(["bash", PREPARE, *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_prepare_rejects_a_folder_outside_the_repository(tmp_path):
    outside = tmp_path / "carry"
    result = prepare(str(outside))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"device_prepare.sh: {outside} is not inside the repository {os.path.realpath(ROOT)} "
        "(a device call carries paths relative to its root)"
    )
    assert not outside.exists()


def test_prepare_help_and_unknown_option():
    assert prepare("--help").stdout.splitlines()[0].startswith("# Gathers what `benchmarks/device_run.sh` needs")
    result = prepare("--fast")
    assert (result.returncode, result.stderr.strip()) == (
        2, "device_prepare.sh: unknown option --fast (usage: device_prepare.sh [DIR])")
