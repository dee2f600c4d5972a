"""`moshi-mlx convert` / `quantize`: loadable output folders, one-line errors, no partial output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import mlx.core as mx
import pytest
from kyutai_mlx_fixture import ASSETS, FILES
from mlx.utils import tree_flatten

from moshi_mlx.cli.main import main
from moshi_mlx.weights import load_lm
from moshi_mlx.weights.quantize import model_quantization


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(map(str, argv)))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def same_params(a, b) -> bool:
    pa, pb = dict(tree_flatten(a.parameters())), dict(tree_flatten(b.parameters()))
    return pa.keys() == pb.keys() and all(
        pa[k].dtype == pb[k].dtype and mx.array_equal(pa[k], pb[k]).item() for k in pa
    )


def test_convert_kyutai_q4_folder_copies_assets(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("config.json", "model.q4.safetensors"):
        shutil.copy(ASSETS / name, src / name)
    (src / "tokenizer_spm_32k_3.model").write_bytes(b"spm")
    code, out, err = run_cli(capsys, "convert", src, tmp_path / "out")
    assert (code, err) == (0, "") and "wrote" in out
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer_spm_32k_3.model"]
    assert same_params(load_lm(tmp_path / "out"), load_lm(src))


def test_convert_with_dtype_and_quantize(tmp_path, capsys):
    out = tmp_path / "q8"
    code, _, err = run_cli(capsys, "convert", ASSETS / FILES["bf16"], out, "--dtype", "fp32", "--quantize", "8")
    assert (code, err) == (0, "")
    model = load_lm(out)
    assert model_quantization(model) == (64, 8) and model.out_norm.weight.dtype == mx.float32
    assert json.loads((out / "config.json").read_text())["quantization"] == {"group_size": 64, "bits": 8}


def test_quantize_reproduces_kyutais_q4_file(tmp_path, capsys):
    out = tmp_path / "q4"
    code, _, err = run_cli(capsys, "quantize", ASSETS / FILES["bf16"], out, "--bits", "4", "--group-size", "32")
    assert (code, err) == (0, "")
    # Kyutai's fixture script quantized the same bf16 weights with nn.quantize: identical packing.
    assert same_params(load_lm(out), load_lm(ASSETS / FILES["q4"]))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["convert", "{tmp}/nowhere", "{tmp}/out"], "no such file or folder"),
        (["convert", "kyutai/absent-repo", "{tmp}/out"], "HF_HUB_OFFLINE is set"),
        (["convert", "{junk}", "{tmp}/out"], "not a safetensors file"),
        (["convert", "{q4}", "{tmp}/out", "--quantize", "4"], "already quantized"),
        (["convert", "{bf16}", "{tmp}/out", "--group-size", "32"], "a group size needs a number of bits"),
        (["convert", "{bf16}", "{tmp}/out", "--quantize", "3"], "argument --quantize: invalid choice"),
        (["quantize", "{bf16}", "{tmp}/out", "--bits", "5"], "argument --bits: invalid choice"),
        (["convert", "{bf16}"], "the following arguments are required: out_dir"),
        (["convert", "{bf16}", "{tmp}/busy"], "already exists and is not an empty folder"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(argv, message, tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    subs = {"tmp": tmp_path, "junk": junk, "q4": ASSETS / FILES["q4"], "bf16": ASSETS / FILES["bf16"]}
    code, out, err = run_cli(capsys, *(a.format(**subs) for a in argv))
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "junk.safetensors"]  # no temp leftovers


def test_console_entry_point(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "moshi_mlx.cli.main", "convert", str(tmp_path / "nowhere"), str(tmp_path / "o")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("moshi-mlx convert: error: ") and out.stderr.count("\n") == 1
    usage = subprocess.run([sys.executable, "-m", "moshi_mlx.cli.main"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "convert" in usage.stderr and "quantize" in usage.stderr
