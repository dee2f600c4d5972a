"""The scripts behind the GPU figures: those a session with a GPU machine runs
(`benchmarks/device_prepare.sh` here, `benchmarks/lmgen_7b_device.py` there; such a session has
minutes of device time and none to debug them, so what can run on a CPU is checked here) and
`benchmarks/gpu_frame_nodes.py`, which counts the GPU frame's primitives anywhere. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

import mlx.core as mx

from benchmarks import gpu_frame_nodes, lmgen_7b_device
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


def test_plan_variants_run_interleaved_with_their_own_environment(tmp_path, monkeypatch, capsys):
    (tmp_path / "moshi_mlx").mkdir()  # stands in for Kyutai's package folder
    calls = []

    def fake_run_side(args, kyutai_dir, extra_env=None):
        calls.append((args["side"], args.get("stages"), extra_env or {}))
        return {"gb_per_s": 2.0} if args["side"] == "bandwidth" else {"weight_bytes": 4e9, "median": 1.0}

    monkeypatch.setattr(lmgen_7b_device, "run_side", fake_run_side)
    plan = {"precisions": [["bfloat16", 4]], "rounds": 2, "steps": 1, "warmup": 0,
            "variants": [["ours", None, None], ["ours-ops", None, None, {"MLX_MAX_OPS_PER_BUFFER": 250}]]}
    monkeypatch.setattr("sys.argv", ["lmgen_7b_device", str(tmp_path), json.dumps(plan)])
    lmgen_7b_device.main()
    ours, ops = ("ours", [None, None], {}), ("ours", [None, None], {"MLX_MAX_OPS_PER_BUFFER": "250"})
    kyutai = ("kyutai", None, {})
    assert calls == [("bandwidth", None, {}), ours, ops, kyutai, kyutai, ops, ours]
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["side"], r["round"], r.get("env")) for r in rows] == [
        ("ours", 0, None), ("ours-ops", 0, {"MLX_MAX_OPS_PER_BUFFER": "250"}), ("kyutai", 0, None),
        ("kyutai", 1, None), ("ours-ops", 1, {"MLX_MAX_OPS_PER_BUFFER": "250"}), ("ours", 1, None)]
    assert rows[0]["roofline_ms"] == pytest.approx(2000.0)  # 4 GB at 2 GB/s


@pytest.mark.parametrize("variant", [["ours", None], ["ours", None, None, 5], ["ours", None, None, {}, {}]])
def test_a_bad_variant_is_one_line(tmp_path, monkeypatch, variant):
    (tmp_path / "moshi_mlx").mkdir()
    plan = {"precisions": [["bfloat16", None]], "rounds": 1, "steps": 1, "warmup": 0, "variants": [variant]}
    monkeypatch.setattr("sys.argv", ["lmgen_7b_device", str(tmp_path), json.dumps(plan)])
    with pytest.raises(SystemExit) as exit_:
        lmgen_7b_device.main()
    assert str(exit_.value).startswith('lmgen_7b_device: bad "variants" in the plan (')


def test_gpu_frame_temporal_layer_primitives():
    """One temporal layer of the GPU frame, masked (a partly filled KV buffer), as MLX's CUDA
    backend runs it: keys and values go to their buffers without being joined first (one
    concatenation and two slices fewer a layer), fast RMSNorm and RoPE kernels, and the attention
    in the pieces CUDA's fallback runs for an array mask."""
    fast = (mx.fast.rms_norm, mx.fast.rope, mx.fast.scaled_dot_product_attention, mx.async_eval, mx.dequantize)
    one, two = (gpu_frame_nodes.frame_primitives(layout={"num_layers": n}) for n in (1, 2))
    layer = {kind: two[kind] - one[kind] for kind in two if two[kind] != one[kind]}
    assert layer == {
        "RMSNorm|RoPE": 4, "Matmul": 4, "AddMM": 2, "DynamicSliceUpdate": 2, "CompiledSigmoidMultiplyMultiply": 1,
        "CompiledBroadcastMultiply": 1, "CompiledBroadcastBroadcastSelect": 1, "Softmax": 1,
        "Reshape": 2, "Split": 2, "Transpose": 1,
    }
    # The stand-ins are gone again.
    assert (mx.fast.rms_norm, mx.fast.rope, mx.fast.scaled_dot_product_attention, mx.async_eval, mx.dequantize) == fast
