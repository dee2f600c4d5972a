"""Our own format: `save_lm` -> `load_lm` round trips exactly (plain and quantized), atomically."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from conftest import require
from kyutai_mlx_fixture import ASSETS, FILES, our_logits
from mlx.utils import tree_flatten

from moshi_mlx.config import ConfigError
from moshi_mlx.weights import detect_layout, load_lm, quantize_lm, save_lm
from moshi_mlx.weights.quantize import model_quantization


def params(model) -> dict[str, mx.array]:
    return dict(tree_flatten(model.parameters()))


def assert_identical(a, b) -> None:
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pa[k].dtype == pb[k].dtype and mx.array_equal(pa[k], pb[k]).item(), k


@pytest.mark.parametrize("variant,dtype", [("bf16", None), ("bf16", mx.float32), ("q4", None), ("q8", mx.float32)])
def test_converted_saved_reloaded_is_exact(variant, dtype, tmp_path):
    model = load_lm(ASSETS / FILES[variant], dtype=dtype)
    out = save_lm(model, tmp_path / "ours")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert detect_layout(list(mx.load(str(out / "model.safetensors"))), "x") == "moshi_mlx"
    config = json.loads((out / "config.json").read_text())
    quant = model_quantization(model)
    assert config.get("quantization") == (None if quant is None else {"group_size": quant[0], "bits": quant[1]})
    assert config["dim"] == 64 and "moshi_name" not in config
    again = load_lm(out)
    assert model_quantization(again) == quant
    assert_identical(model, again)
    for x, y in zip(our_logits(model), our_logits(again)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("bits,group_size", [(8, 64), (4, 32), (4, 64)])
def test_quantized_save_load_round_trip_is_exact(bits, group_size, tmp_path):
    model = load_lm(ASSETS / FILES["bf16"])
    assert quantize_lm(model, bits, group_size) == (group_size, bits)
    out = save_lm(model, tmp_path / f"q{bits}")
    again = load_lm(out)
    assert model_quantization(again) == (group_size, bits)
    assert_identical(model, again)
    assert float(mx.abs(again.text_emb(mx.array([[-1]]))).sum()) == 0.0  # zero token survives


def test_quantize_refuses_a_quantized_model_and_bad_settings():
    model = load_lm(ASSETS / FILES["q4"])
    with pytest.raises(ValueError, match="already quantized"):
        quantize_lm(model, 8)
    fresh = load_lm(ASSETS / FILES["bf16"])
    with pytest.raises(ValueError, match="unsupported bits 7"):
        quantize_lm(fresh, 7)
    with pytest.raises(ValueError, match="unsupported group size 48"):
        quantize_lm(fresh, 4, 48)


def test_save_refuses_a_non_empty_folder_and_leaves_nothing_on_failure(tmp_path):
    model = load_lm(ASSETS / FILES["q4"])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match=rf"^{busy}: already exists"):
        save_lm(model, busy)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    with pytest.raises(FileNotFoundError):
        save_lm(model, tmp_path / "new", extra_files=[tmp_path / "no_such_tokenizer.model"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # no output, no temp folder
    empty = tmp_path / "empty"
    empty.mkdir()
    assert save_lm(model, empty, extra_files=[busy / "keep.txt"]) == empty
    assert sorted(p.name for p in empty.iterdir()) == ["config.json", "keep.txt", "model.safetensors"]


def test_recorded_quantization_must_match_the_weights(tmp_path):
    out = save_lm(load_lm(ASSETS / FILES["q4"]), tmp_path / "ours")
    config = json.loads((out / "config.json").read_text())
    config["quantization"] = {"group_size": 64, "bits": 4}
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"'quantization' says .* but .* holds group size 32, 4 bits"):
        load_lm(out)


def test_torch_checkpoint_in_a_folder_loads_through_load_lm(tmp_path):
    require("torch")
    require("moshi")
    from lm_reference import build_torch_lm, save_checkpoint

    from moshi_mlx.weights.kyutai_torch import load_lm_weights

    raw = json.loads((ASSETS / "config.json").read_text())
    folder = tmp_path / "torch"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(raw))
    for spelling in ("published", "state_dict"):
        path = save_checkpoint(build_torch_lm(raw, seed=3), folder / "model.safetensors", spelling)
        model = load_lm(folder)
        from moshi_mlx.models.lm import Lm

        expected = load_lm_weights(Lm(model.cfg), path)
        assert_identical(model, expected)


def test_load_is_lazy(tmp_path):
    """Weights stay mapped until used: bytes changed after `load_lm` show up at first evaluation."""
    import shutil

    for name in ("config.json", "model.safetensors"):
        shutil.copy(ASSETS / name, tmp_path / name)
    model = load_lm(tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header:] = bytes(len(data) - header)
    path.write_bytes(data)  # same size, every tensor now zero
    assert float(mx.abs(model.text_linear.weight.astype(mx.float32)).sum()) == 0.0
