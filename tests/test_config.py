"""Config parsing: presets, derived sizes and clear errors for what we cannot honour."""

from __future__ import annotations

import pytest

from moshi_mlx.config import PRESETS, ConfigError, LmConfig, TransformerConfig


def test_moshi_7b_preset_sizes():
    cfg = LmConfig.from_preset("moshi_7b")
    t, d = cfg.transformer, cfg.depformer
    assert (t.d_model, t.num_heads, t.num_layers, t.head_dim) == (4096, 32, 32, 128)
    assert t.ffn_hidden() == 11264 and d.ffn_hidden() == 2816
    assert t.norm == "rms_norm_f32" and t.norm_eps == 1e-8
    assert t.context == 3000 and d.context is None  # torch drops the depformer context
    assert (cfg.text_card, cfg.card, cfg.n_q, cfg.dep_q) == (32000, 2048, 16, 8)
    assert cfg.delays == [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
    assert d.weights_per_step == 8 and d.num_weight_sets == 8 and cfg.num_depformer_in == 8
    assert d.positional_embedding == "none" and d.head_dim == 64
    assert cfg.text_initial_token_id == 32000 and cfg.initial_token_id == 2048
    assert LmConfig.from_preset("moshika") == LmConfig.from_preset("moshiko") == cfg


def test_every_preset_parses():
    for name in PRESETS:
        LmConfig.from_preset(name)


def test_schedule_sets_weight_sets():
    raw = dict(LmConfig.from_preset("moshi_7b").raw)
    raw["depformer_weights_per_step_schedule"] = [0, 1, 2, 3, 4, 4, 4, 4]
    cfg = LmConfig.from_kyutai_json(raw)
    assert cfg.depformer.num_weight_sets == 5 and cfg.num_depformer_in == 5
    assert [cfg.depformer.step_weight_index(k) for k in range(8)] == [0, 1, 2, 3, 4, 4, 4, 4]


def test_metadata_keys_are_accepted():
    raw = dict(LmConfig.from_preset("moshi_7b").raw, moshi_name="model.q4.safetensors", model_type="moshi")
    LmConfig.from_kyutai_json(raw)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dim_feedforwad": 3}, "unexpected config key 'dim_feedforwad'"),
        ({"norm": "batch_norm"}, "unsupported norm 'batch_norm'"),
        ({"positional_embedding": "sin_rope"}, "unsupported positional_embedding"),
        ({"conditioners": {"description": {}}}, "conditioner 'description' needs a type 'lut' or 'tensor'"),
        ({"cross_attention": True}, "cross_attention must be true exactly when the fuser has 'cross'"),
        ({"delays": [0, 1]}, "delays has 2 entries"),
        ({"num_heads": 30}, "not divisible"),
        ({"dim": "4096"}, "config key 'dim' has type str"),
        ({"depformer_weights_per_step_schedule": [0, 1]}, "schedule has 2 entries"),
        # Accepted but never used would be silently wrong: refused until implemented.
        ({"norm_emb": True}, "'norm_emb'=True is not supported"),
        ({"conv_layout": True}, "'conv_layout'=True is not supported"),
    ],
)
def test_bad_configs_raise_clear_errors(change, message):
    raw = {**LmConfig.from_preset("moshi_7b").raw, **change}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        LmConfig.from_kyutai_json(raw)


def test_bad_config_file_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"dim": 64, "typo_key": 1}')
    with pytest.raises(ConfigError, match=f"{path}: unexpected config key 'typo_key'"):
        LmConfig.from_file(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=str(path)):
        LmConfig.from_file(path)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'moshi_9b'"):
        LmConfig.from_preset("moshi_9b")


def test_ffn_hidden_follows_torch_gating_rule():
    assert TransformerConfig(64, 4, 1, 256, gating="silu").ffn_hidden() == 21 * 64 // 8
    assert TransformerConfig(64, 4, 1, 264, gating="silu").ffn_hidden() == 2 * 264 // 3
    assert TransformerConfig(64, 4, 1, 264, gating="none").ffn_hidden() == 264


def test_config_errors_are_user_errors_with_their_cause(tmp_path):
    from moshi_mlx.errors import MoshiError

    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(MoshiError) as info:
        LmConfig.from_file(path)
    assert isinstance(info.value, ValueError) and info.value.__cause__ is not None
    raw = {**LmConfig.from_preset("moshi_7b").raw, "extra_heads_num_heads": 0, "conv_layout": False}
    assert LmConfig.from_kyutai_json(raw).extra_heads_num_heads == 0  # the defaults stay accepted
