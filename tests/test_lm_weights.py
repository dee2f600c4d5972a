"""Strict checkpoint loading: every missing, unexpected or mis-shaped key is named."""

from __future__ import annotations

import mlx.core as mx
import pytest
from conftest import require

require("torch")
require("moshi")

from lm_reference import MOSHI_LIKE, build_torch_lm, published_state_dict

from moshi_mlx.config import LmConfig
from moshi_mlx.models.lm import Lm
from moshi_mlx.weights.common import WeightsError
from moshi_mlx.weights.kyutai_torch import load_lm_weights


@pytest.fixture(scope="module", params=["published", "state_dict"])
def state(request):
    ref = build_torch_lm(MOSHI_LIKE, seed=0)
    sd = published_state_dict(ref) if request.param == "published" else ref.state_dict()
    return {k: mx.array(v.numpy()) for k, v in sd.items()}


def fresh() -> Lm:
    return Lm(LmConfig.from_kyutai_json(MOSHI_LIKE))


def save(tmp_path, weights) -> str:
    path = str(tmp_path / "bad.safetensors")
    mx.save_safetensors(path, weights)
    return path


def test_missing_key_is_named(state, tmp_path):
    weights = dict(state)
    del weights["depformer_emb.1.weight"]
    path = save(tmp_path, weights)
    with pytest.raises(WeightsError, match=rf"^{path}: missing key 'depformer_emb.1.weight'$"):
        load_lm_weights(fresh(), path)


def test_extra_key_is_named(state, tmp_path):
    path = save(tmp_path, {**state, "emb.99.weight": mx.zeros((3, 3))})
    with pytest.raises(WeightsError, match=rf"^{path}: unexpected key 'emb.99.weight'$"):
        load_lm_weights(fresh(), path)


def test_wrong_shape_is_named(state, tmp_path):
    key = "transformer.layers.1.norm2.alpha"
    path = save(tmp_path, {**state, key: mx.ones((1, 1, 63))})
    with pytest.raises(WeightsError, match=rf"^{path}: key '{key}' has shape \(63,\), expected \(64,\)"):
        load_lm_weights(fresh(), path)
    key = "linears.0.weight"
    path = save(tmp_path, {**state, key: mx.ones((41, 32))})
    with pytest.raises(WeightsError, match=rf"key '{key}' has shape \(41, 32\), expected \(40, 32\)"):
        load_lm_weights(fresh(), path)


def test_wrong_stacking_is_named(tmp_path):
    ref = build_torch_lm(MOSHI_LIKE, seed=0)
    weights = {k: mx.array(v.numpy()) for k, v in published_state_dict(ref).items()}
    key = "depformer.layers.0.self_attn.in_proj_weight"
    weights[key] = weights[key][:-1]
    with pytest.raises(WeightsError, match=f"key '{key}' has shape"):
        load_lm_weights(fresh(), weights, source="dict")


def test_unsupported_and_unreadable_files(state, tmp_path):
    path = save(tmp_path, {**state, "text_linear.weight_scb": mx.ones((96,))})
    with pytest.raises(WeightsError, match="text_linear.weight_scb"):
        load_lm_weights(fresh(), path)
    with pytest.raises(WeightsError, match="no such file"):
        load_lm_weights(fresh(), tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match=rf"^{junk}: not a readable safetensors file"):
        load_lm_weights(fresh(), junk)


def test_failed_load_leaves_model_untouched(state):
    model = fresh()
    before = model.text_linear.weight
    weights = dict(state)
    del weights["out_norm.alpha"]
    with pytest.raises(WeightsError):
        load_lm_weights(model, weights, source="dict")
    assert model.text_linear.weight is before
