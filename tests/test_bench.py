"""`moshi-mlx bench`: the shape of its --json output and table on the micro config, and how it
keeps Kyutai's process away from our package. No timing is asserted (benchmarks are not tests)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from moshi_mlx.cli import bench

KYUTAI_PYTHON = os.environ.get("MOSHI_MLX_KYUTAI_PYTHON")


def run_json(capsys, *argv: str) -> dict:
    bench.main(["--config", "micro", "--steps", "2", "--warmup", "1", "--rounds", "1", "--no-mimi", "--json", *argv])
    return json.loads(capsys.readouterr().out)


def check_side(side: dict) -> None:
    assert side["step_ms"] > 0 and len(side["round_medians_ms"]) == 1
    assert set(side["components_ms"]) == {"temporal", "depformer", "sampling"}
    assert all(v > 0 for v in side["components_ms"].values())
    assert 1 <= side["python_nodes"] <= side["graph_nodes"]
    assert side["peak_rss_mb"] >= side["rss_after_imports_mb"] > 0
    assert side["roofline_fraction"] > 0


def check_result(result: dict, precisions: list[str]) -> None:
    assert result["backend"] == "mlx-cpu" and result["machine"] and result["date"]
    assert [(c["config"], c["precision"]) for c in result["cases"]] == [("micro", p) for p in precisions]
    for case in result["cases"]:
        assert case["bandwidth_gb_s"] > 0 and case["roofline_ms"] > 0
        assert "kyutai" not in case["sides"]
        for side in case["sides"].values():
            check_side(side)
        assert case["sides"]["ours"]["module"].startswith(str(bench.PACKAGE_ROOT))
    # --table prints the README's rows from the same result, one per case.
    lines = bench.table_rows(result).splitlines()
    assert lines[0].startswith("| machine | backend | config | dtype | ours")
    assert len(lines) == 2 + len(precisions)
    assert all(f"| mlx-cpu | micro | {p} |" in line for p, line in zip(precisions, lines[2:]))


def test_json_on_micro_reports_every_measure_for_each_side(capsys):
    check_result(run_json(capsys, "--precision", "fp32", "--kyutai-python", ""), ["fp32"])


@pytest.mark.slow
def test_json_quantized(capsys):
    result = run_json(capsys, "--precision", "bf16,q4", "--kyutai-python", "")
    check_result(result, ["bf16", "q4"])
    bf16, q4 = result["cases"]
    assert q4["bits"] == 4 and q4["group_size"] and bf16["bits"] is None
    # The weights a step reads: fewer bytes once quantized to 4 bits.
    assert 0 < q4["weights_read_mb"] < bf16["weights_read_mb"] / 2


def test_kyutai_process_does_not_see_our_package(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(bench.PACKAGE_ROOT), "/elsewhere"]))
    env = bench.kyutai_env("/opt/kyutai-site")
    assert env["PYTHONPATH"].split(os.pathsep) == ["/opt/kyutai-site", "/elsewhere"]
    # Our package offered as Kyutai's is refused with a line naming it.
    with pytest.raises(RuntimeError, match="is not Kyutai's moshi_mlx 0.3.0"):
        bench.call_worker(sys.executable, {"side": "kyutai", "config": {}}, bench.ours_env())


def test_bad_config_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--config", "huge"])
    assert e.value.code == 2 and "unknown bench config 'huge'" in capsys.readouterr().err


@pytest.mark.skipif(not KYUTAI_PYTHON, reason="set MOSHI_MLX_KYUTAI_PYTHON to Kyutai's venv python (benchmarks/make_kyutai_venv.sh)")
def test_json_with_kyutai(capsys):
    case = run_json(capsys, "--precision", "fp32", "--kyutai-python", KYUTAI_PYTHON)["cases"][0]
    check_side(case["sides"]["kyutai"])
    assert not case["sides"]["kyutai"]["module"].startswith(str(bench.PACKAGE_ROOT))
    assert case["speedup_over_kyutai"] > 0
    # The same architecture on both sides (Kyutai keeps a copy of the depformer's norms per codebook).
    assert case["sides"]["kyutai"]["param_bytes"] == pytest.approx(case["sides"]["ours"]["param_bytes"], rel=0.01)


def test_rounds_alternate_which_side_runs_first(monkeypatch):
    """Odd rounds run the sides in reverse order (a side never always follows the same process)."""
    order = []

    def fake_worker(python, args, env):
        side = args["side"] if args["side"] != "ours" or args["compiled"] else "ours-uncompiled"
        order.append(side)
        return {"step_ms": [1.0], "components_ms": {"temporal": 1.0}, "graph_nodes": 1, "python_nodes": 1,
                "rss_mb": 1.0, "rss_after_imports_mb": 1.0, "mlx_peak_mb": 1.0, "module": "m",
                "param_bytes": 1, "unquantized_layers": 0, "weights_read_bytes": 10**6, "gb_per_s": 1.0}

    monkeypatch.setattr(bench, "call_worker", fake_worker)
    monkeypatch.setattr(bench, "compiled_switch", lambda: True)
    bench.bench_case("micro", "fp32", None, 2, 1, 3, "kyutai-python", None, mimi=False, uncompiled=True)
    sides = ["ours", "ours-uncompiled", "kyutai"]
    assert order == [*sides, "bandwidth", *sides[::-1], "bandwidth", *sides, "bandwidth"]
