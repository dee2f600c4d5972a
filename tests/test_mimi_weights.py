"""Loading Kyutai torch Mimi checkpoints: both key spellings, strict errors naming file, key and shapes."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from conftest import require
from mlx.utils import tree_flatten

require("torch")
require("moshi")
import mimi_reference as ref

from moshi_mlx.config import MimiConfig
from moshi_mlx.weights.common import WeightsError
from moshi_mlx.weights.mimi import convert_mimi_torch, load_mimi, mimi_key_table

ATTN = "encoder_transformer.transformer.layers.0.self_attn.in_proj_weight"


@pytest.fixture(scope="module")
def state() -> dict[str, mx.array]:
    return dict(mx.load(str(ref.fixture_path())))


def test_key_table_covers_the_torch_state_dict_exactly():
    torch_mimi = ref.torch_mimi()
    assert set(mimi_key_table(MimiConfig.mimi_202407())) == set(torch_mimi.state_dict())


def test_both_spellings_give_the_same_parameters(state):
    cfg = MimiConfig.mimi_202407()
    published, _ = convert_mimi_torch(state, cfg)
    live = {k: v.numpy() for k, v in ref.torch_mimi().state_dict().items()}  # in_projs.0.weight spelling
    assert any(".in_projs.0.weight" in k for k in live) and ATTN in state
    converted, _ = convert_mimi_torch(live, cfg)
    assert published.keys() == converted.keys()
    for k in published:
        np.testing.assert_array_equal(np.array(published[k]), np.array(converted[k]), err_msg=k)
    model = ref.ours()
    ours = dict(tree_flatten(model.parameters()))
    assert ours.keys() == published.keys()


def test_num_codebooks_selects_the_first_levels(state):
    model = load_mimi(state, MimiConfig.mimi_202407(num_codebooks=3))
    assert len(model.quantizer.rvq_rest.codebooks) == 2
    full = ref.ours()
    np.testing.assert_array_equal(
        np.array(model.quantizer.rvq_rest.codebooks[1].embedding), np.array(full.quantizer.rvq_rest.codebooks[1].embedding)
    )


def test_missing_key(state):
    broken = {k: v for k, v in state.items() if k != ATTN}
    with pytest.raises(WeightsError, match=rf"^state dict: missing key '{ATTN}'$"):
        load_mimi(broken)


def test_missing_unused_codebook_level(state):
    key = "quantizer.rvq_rest.vq.layers.30._codebook.embedding_sum"
    with pytest.raises(WeightsError, match=rf"missing key '{key}'"):
        load_mimi({k: v for k, v in state.items() if k != key})


def test_unexpected_key(state, tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "extra.safetensors"
    extra = {k: np.array(v) for k, v in state.items() if k.startswith("downsample") or k.startswith("upsample")}
    extra["decoder.model.99.conv.conv.weight"] = np.zeros((1, 1, 1), np.float32)
    save_file(extra, str(path))
    with pytest.raises(WeightsError, match=rf"^{path}: unexpected key 'decoder.model.99.conv.conv.weight'$"):
        load_mimi(path)


def test_wrong_shape(state):
    key = "decoder.model.2.convtr.convtr.weight"
    broken = dict(state)
    broken[key] = mx.zeros((1024, 512, 15))
    with pytest.raises(WeightsError, match=rf"key '{key}' has shape \(1024, 512, 15\), expected \(1024, 512, 16\)$"):
        load_mimi(broken)


def test_wrong_transformer_shape(state):
    broken = dict(state)
    broken[ATTN] = mx.zeros((1024, 512))
    with pytest.raises(WeightsError, match=rf"key '{ATTN}' has shape \(1024, 512\), expected \(1536, 512\)$"):
        load_mimi(broken)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        load_mimi(tmp_path / "nope.safetensors")
