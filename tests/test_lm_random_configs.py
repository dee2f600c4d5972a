"""Seeded random architectures (beyond the hand-written ones) against torch moshi's `LMModel`."""

from __future__ import annotations

import random

import mlx.core as mx
import numpy as np
import pytest
from conftest import require

torch = require("torch")
require("moshi")

from lm_reference import build_torch_lm, random_codes, save_checkpoint
from test_lm_parity import ATOL, load_ours, max_abs


def random_config(seed: int) -> dict:
    """A small LMModel config drawn from the options torch moshi and our loader both support."""
    r = random.Random(seed)
    heads = r.choice([1, 2, 4])
    kv_repeat = r.choice([1, heads]) if heads > 1 else 1
    n_q = r.choice([2, 4, 6])
    dep_q = r.randint(2, n_q)  # torch's training forward needs depformer_emb (dep_q >= 2)
    wps = r.random() < 0.7
    dep_heads = kv_repeat * r.choice([1, 2])  # kv_repeat applies to the depformer too
    cfg = dict(
        dim=16 * heads * r.choice([1, 2]), num_heads=heads, num_layers=r.randint(1, 3),
        hidden_scale=r.choice([2, 4, 4.125]), kv_repeat=kv_repeat, n_q=n_q, dep_q=dep_q,
        card=r.choice([17, 33]), text_card=r.choice([40, 64]),
        context=r.choice([None, 3, 7]), max_period=r.choice([100.0, 10000.0]),
        norm=r.choice(["rms_norm", "rms_norm_f32", "layer_norm", "layer_norm_f32"]),
        gating=r.choice(["none", "silu", "gelu"]), positional_embedding=r.choice(["rope", "sin", "none"]),
        layer_scale=r.choice([None, 0.3]), bias_proj=r.random() < 0.3,
        depformer_dim=8 * dep_heads * r.choice([2, 3]), depformer_num_heads=dep_heads,
        depformer_num_layers=r.randint(1, 2), depformer_multi_linear=r.random() < 0.6,
        depformer_weights_per_step=wps, depformer_pos_emb=r.choice(["none", "rope", "sin"]),
        depformer_gating=r.choice(["silu", "gelu"]) if wps else r.choice(["none", "silu"]),
        delays=[r.choice([0, 0, 1, 2]) for _ in range(n_q + 1)],
    )
    if wps and dep_q > 1 and r.random() < 0.5:
        sched = sorted(r.randint(0, dep_q - 1) for _ in range(dep_q))
        cfg["depformer_weights_per_step_schedule"] = [sorted(set(sched)).index(s) for s in sched]
    if r.random() < 0.3:
        cfg["depformer_low_rank_embeddings"] = r.choice([4, 8])
    return cfg


def streamable_config(seed: int) -> dict:
    """`random_config` with a small context and a depformer torch can stream (per-step weights:
    torch sizes the depformer's KV state from them)."""
    config = {**random_config(seed), "context": random.Random(seed).choice([2, 3, 5, 8])}
    config["depformer_weights_per_step"] = True
    if config["depformer_gating"] == "none":
        config["depformer_gating"] = "silu"
    return config


@pytest.mark.parametrize("seed", range(12))
def test_random_config_forward_matches_torch(seed, tmp_path):
    config = random_config(seed)
    ref = build_torch_lm(config, seed=seed)
    ours = load_ours(config, save_checkpoint(ref, tmp_path / "lm.safetensors", "published"))
    codes = random_codes(config, batch=2, steps=9, seed=seed)
    with torch.no_grad():
        out = ref(torch.from_numpy(codes))
    got = ours(mx.array(codes))
    diff = max(max_abs(got.logits, out.logits.numpy()), max_abs(got.text_logits, out.text_logits.numpy()))
    assert diff <= ATOL, (diff, config)
    assert np.array_equal(np.array(got.mask), out.mask.numpy())


@pytest.mark.parametrize("seed", range(100, 106))
def test_random_config_streaming_matches_torch_streaming(seed, tmp_path):
    from test_lm_parity import teacher_forced_stream, torch_stream

    config = streamable_config(seed)
    ref = build_torch_lm(config, seed=seed)
    ours = load_ours(config, save_checkpoint(ref, tmp_path / "lm.safetensors", "state_dict"))
    codes = random_codes(config, batch=1, steps=14, seed=seed)
    ref_text, ref_audio = torch_stream(ref, codes)
    got_text, got_audio = teacher_forced_stream(ours, codes)
    diff = max(np.abs(got_text - ref_text).max(), np.abs(got_audio - ref_audio).max())
    assert diff <= ATOL, (diff, config)


@pytest.mark.parametrize("seed", range(200, 204))
def test_random_config_greedy_generation_matches_torch_lmgen(seed, tmp_path):
    from gen_reference import torch_and_ours, torch_greedy_stream
    from test_generate import ours_greedy_stream

    config = streamable_config(seed)
    ref, ours = torch_and_ours(config, tmp_path, seed=seed)
    user = np.random.default_rng(seed).integers(0, config["card"], size=(2, config["n_q"] - config["dep_q"], 40))
    expected, _ = torch_greedy_stream(ref, user)
    got = ours_greedy_stream(ours, user)
    assert [g is None for g in got] == [e is None for e in expected]
    for g, e in zip(got, expected):
        assert g is None or np.array_equal(g, e), (config, g, e)
