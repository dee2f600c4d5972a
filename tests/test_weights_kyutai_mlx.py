"""Kyutai's published MLX layout (bf16, q8, q4): strict loading, equal logits, named errors.

Fixtures in tests/assets/kyutai_mlx were written by Kyutai's own moshi_mlx 0.3.0
(`tests/fixtures/make_kyutai_mlx_fixture.py`), with its logits on single-token teacher-forced steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from conftest import require
from kyutai_mlx_fixture import ASSETS, FILES, QUANT, kyutai_logits, our_logits
from mlx.utils import tree_flatten

from moshi_mlx.config import LmConfig
from moshi_mlx.models.lm import QuantizedScaledEmbedding
from moshi_mlx.weights import WeightsError, detect_layout, load_lm
from moshi_mlx.weights.load import build_lm
from moshi_mlx.weights.quantize import model_quantization

# fp32 compute on identical weights: only summation order differs (measured: 0.0 on CPU).
FP32_ATOL = 1e-4
# bf16 compute: ours and Kyutai's are two roundings of the same fp32 computation (ours sums
# the embeddings audio-first and computes RMSNorm in fp32), so ours must be as close to the fp32
# result as Kyutai's own bf16 run is, up to a factor 3 for rounding order and platform kernels
# (measured ratio <= 1.74, for q8 text logits).
BF16_FACTOR = 3.0


def config() -> LmConfig:
    return LmConfig.from_file(ASSETS / "config.json")


def state(variant: str) -> dict[str, mx.array]:
    return dict(mx.load(str(ASSETS / FILES[variant])))


@pytest.mark.parametrize("variant", sorted(FILES))
def test_fixture_loads_strictly_and_matches_kyutai_fp32(variant):
    model = load_lm(ASSETS / FILES[variant], dtype=mx.float32)
    assert model_quantization(model) == QUANT[variant]
    assert detect_layout(list(state(variant)), "x") == "kyutai_mlx"
    if QUANT[variant]:
        assert isinstance(model.text_emb, QuantizedScaledEmbedding)
        assert isinstance(model.transformer.layers[0].gating.linear_out, nn.Linear)  # 176 wide: not quantized
    text, audio = our_logits(model)
    ref_text, ref_audio = kyutai_logits(variant, "fp32")
    diff = max(np.abs(text - ref_text).max(), np.abs(audio - ref_audio).max())
    print(f"{variant} fp32: max-abs vs Kyutai MLX {diff:.2e}")
    assert diff <= FP32_ATOL


@pytest.mark.parametrize("variant", sorted(FILES))
def test_fixture_matches_kyutai_in_bf16(variant):
    model = load_lm(ASSETS / FILES[variant])  # the checkpoint's dtype: bf16
    assert model.out_norm.weight.dtype == mx.bfloat16
    text, audio = our_logits(model)
    exact_text, exact_audio = kyutai_logits(variant, "fp32")
    ky_text, ky_audio = kyutai_logits(variant, "bf16")
    for ours, theirs, exact, what in ((text, ky_text, exact_text, "text"), (audio, ky_audio, exact_audio, "audio")):
        ours_err, their_err = np.abs(ours - exact).max(), np.abs(theirs - exact).max()
        print(f"{variant} bf16 {what}: ours-exact {ours_err:.2e}, Kyutai-exact {their_err:.2e}, "
              f"ours-Kyutai {np.abs(ours - theirs).max():.2e}")
        assert ours_err <= BF16_FACTOR * their_err


def test_published_torch_weights_convert_to_the_same_parameters():
    """The MLX file and the torch checkpoint it was made from give bit-identical parameters."""
    require("torch")
    require("moshi")
    import json

    from lm_reference import build_torch_lm, published_state_dict

    seed = int(mx.load(str(ASSETS / "reference.safetensors"), return_metadata=True)[1]["seed"])
    torch_model = build_torch_lm(json.loads((ASSETS / "config.json").read_text()), seed=seed)
    torch_state = {k: mx.array(v.numpy()) for k, v in published_state_dict(torch_model).items()}
    from_torch = dict(tree_flatten(build_lm(torch_state, config(), "torch", mx.bfloat16).parameters()))
    from_mlx = dict(tree_flatten(load_lm(ASSETS / FILES["bf16"]).parameters()))
    assert from_torch.keys() == from_mlx.keys()
    for k in from_mlx:
        assert mx.array_equal(from_torch[k], from_mlx[k]).item(), k


def test_committed_fixture_is_what_the_script_makes(tmp_path):
    """Regenerated with Kyutai's venv (never ours: same import name), the fixture equals the committed one.

    Skips unless `MOSHI_MLX_KYUTAI_PYTHON` names that venv's python (CI does not build it).
    Weights and inputs must be bit-equal; logits within 2 bf16 steps (other CPUs round differently).
    """
    kyutai_python = os.environ.get("MOSHI_MLX_KYUTAI_PYTHON")
    if not kyutai_python:
        pytest.skip("MOSHI_MLX_KYUTAI_PYTHON is not set (the python of a venv with Kyutai's moshi_mlx 0.3.0)")
    require("torch")
    require("moshi")
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "kyutai_mlx"
    cmd = [sys.executable, "-m", "tests.fixtures.make_kyutai_mlx_fixture", "--out", str(out),
           "--kyutai-python", kyutai_python]
    run = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ASSETS.iterdir())
    assert (out / "config.json").read_text() == (ASSETS / "config.json").read_text()
    for name in [*FILES.values(), "reference.safetensors"]:
        fresh, committed = mx.load(str(out / name)), mx.load(str(ASSETS / name))
        assert sorted(fresh) == sorted(committed), name
        for key, want in committed.items():
            got = fresh[key]
            assert got.dtype == want.dtype and got.shape == want.shape, f"{name}: {key}"
            if key.endswith("_logits"):
                tol = 2 * 2.0**-7 * mx.abs(want).max().item()
                assert mx.abs(got - want).max().item() <= tol, f"{name}: {key}"
            else:
                assert mx.array_equal(got, want).item(), f"{name}: {key}"


def load_dict(weights: dict[str, mx.array]):
    return build_lm(weights, config(), "fixture")


@pytest.mark.parametrize("variant", ["bf16", "q4"])
def test_missing_key_is_named_in_mlx_spelling(variant):
    weights = state(variant)
    del weights["depformer.slices.2.emb.weight"]
    with pytest.raises(WeightsError, match=r"^fixture: missing key 'depformer.slices.2.emb.weight'$"):
        load_dict(weights)


def test_missing_copy_of_a_shared_weight_is_named():
    # Slices 1 and 2 share weight set 1 (schedule [0, 1, 1]): slice 1 alone would fill it.
    weights = state("bf16")
    key = "depformer.slices.2.transformer.layers.1.self_attn.in_proj.weight"
    del weights[key]
    with pytest.raises(WeightsError, match=rf"^fixture: missing key '{key}'$"):
        load_dict(weights)


@pytest.mark.parametrize("variant", ["bf16", "q8"])
def test_extra_key_is_named(variant):
    weights = {**state(variant), "depformer.slices.3.linear_in.weight": mx.zeros((32, 64))}
    with pytest.raises(WeightsError, match=r"^fixture: unexpected key 'depformer.slices.3.linear_in.weight'$"):
        load_dict(weights)
    weights = {**state(variant), "text_linear.bias": mx.zeros((32,))}
    with pytest.raises(WeightsError, match=r"^fixture: unexpected key 'text_linear.bias'"):
        load_dict(weights)


@pytest.mark.parametrize("variant", ["bf16", "q4"])
def test_wrong_shape_is_named(variant):
    weights = state(variant)
    key = "audio_embs.1.weight"
    weights[key] = weights[key][:-1]
    with pytest.raises(WeightsError, match=rf"^fixture: key '{key}' has shape \(16, \d+\), expected \(17, \d+\)"):
        load_dict(weights)


def test_disagreeing_duplicates_are_named():
    weights = state("bf16")
    weights["depformer.slices.2.transformer.layers.0.norm1.weight"] = (
        weights["depformer.slices.2.transformer.layers.0.norm1.weight"] * 2
    )
    with pytest.raises(WeightsError, match=r"key 'depformer.slices.2.transformer.layers.0.norm1.weight' differs from "
                                           r"'depformer.slices.[01].transformer.layers.0.norm1.weight'"):
        load_dict(weights)


def test_quantization_errors_are_named():
    weights = state("q4")
    del weights["text_linear.biases"]
    with pytest.raises(WeightsError, match=r"^fixture: missing key 'text_linear.biases'$"):
        load_dict(weights)
    # One module quantized differently from the rest (8 bits, group 64) cannot share one config.
    q8 = state("q8")
    mixed = {**state("q4"), **{k: q8[k] for k in q8 if k.startswith("text_linear.")}}
    with pytest.raises(WeightsError, match=r"is quantized with group size (32|64) and (4|8) bits, but"):
        load_dict(mixed)


def test_unknown_layout_is_named(tmp_path):
    path = tmp_path / "other.safetensors"
    mx.save_safetensors(str(path), {"encoder.conv.weight": mx.zeros((2, 2))})
    with pytest.raises(WeightsError, match=rf"^{path}: not a Moshi LM checkpoint .*'encoder.conv.weight'"):
        load_lm(path, config=config())


def test_hf_transformers_layout_is_named(tmp_path):
    """The HF layout loads (tests/test_hf.py); with a config it cannot hold, the error names both."""
    path = tmp_path / "hf.safetensors"
    weights = {"decoder.model.norm.weight": mx.ones((4,)), "embed_tokens.0.weight": mx.ones((2, 4))}
    mx.save_safetensors(str(path), weights)
    expected = rf"^{path}: HF transformers Moshi layout, but the config does not fit it \(.*n_q=4 is not 2 x dep_q=3\)$"
    with pytest.raises(WeightsError, match=expected):
        load_lm(path, config=config())
