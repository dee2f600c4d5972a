"""The MLX Moshi LM equals torch moshi's `LMModel` on random weights (live reference)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from conftest import require

torch = require("torch")
require("moshi")

from lm_reference import CONFIGS, build_torch_lm, random_codes, save_checkpoint  # noqa: E402

from moshi_mlx.config import LmConfig  # noqa: E402
from moshi_mlx.models.lm import Lm, delay_sequence  # noqa: E402
from moshi_mlx.weights.kyutai_torch import load_lm_weights  # noqa: E402

ATOL = 1e-4


def load_ours(config: dict, path, dtype=mx.float32) -> Lm:
    model = Lm(LmConfig.from_kyutai_json(config))
    model.set_dtype(dtype)
    return load_lm_weights(model, path)


def max_abs(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert np.array_equal(np.isnan(a), np.isnan(b)), "NaN (invalid) positions differ"
    return float(np.nanmax(np.abs(a - b)))


@pytest.mark.parametrize("spelling", ["published", "state_dict"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_matches_torch(name, spelling, tmp_path):
    config = CONFIGS[name]
    ref = build_torch_lm(config, seed=1)
    ours = load_ours(config, save_checkpoint(ref, tmp_path / "lm.safetensors", spelling))
    codes = random_codes(config, batch=2, steps=20, seed=2)
    codes[0, 1, 3] = -1  # zero token: embeds to 0 and is masked out of the loss
    codes[1, 0, 5] = -1
    with torch.no_grad():
        out = ref(torch.from_numpy(codes))
    got = ours(mx.array(codes))
    diff_audio = max_abs(got.logits, out.logits.numpy())
    diff_text = max_abs(got.text_logits, out.text_logits.numpy())
    print(f"{name}/{spelling}: audio {diff_audio:.2e} text {diff_text:.2e}")
    assert diff_audio <= ATOL and diff_text <= ATOL
    assert np.array_equal(np.array(got.mask), out.mask.numpy())
    assert np.array_equal(np.array(got.text_mask), out.text_mask.numpy())


def teacher_forced_stream(model: Lm, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs `step` + `depformer_step` frame by frame on the delayed sequence of `codes`."""
    B, K, T = codes.shape
    initial = model.initial_tokens(B)
    delayed = delay_sequence(model.cfg.delays, mx.array(codes, dtype=mx.int32), initial)
    delayed = mx.concatenate([initial, delayed], axis=2)
    cache, dcache = model.make_cache(), model.make_depformer_cache()
    text, audio = [], []
    for t in range(T):
        hidden, text_logits = model.step(delayed[:, :, t : t + 1], cache)
        for c in dcache:
            c.reset()
        per_k = [model.depformer_step(k, delayed[:, k, t + 1], hidden, dcache) for k in range(model.cfg.dep_q)]
        mx.eval(text_logits, per_k)
        text.append(np.array(text_logits[:, 0]))
        audio.append(np.stack([np.array(x) for x in per_k], axis=1))
    return np.stack(text, axis=1), np.stack(audio, axis=2)  # [B, T, V], [B, dep_q, T, card]


@pytest.mark.parametrize("name", ["moshi_like", "schedule_low_rank"])
def test_streaming_equals_batch(name, tmp_path):
    config = {**CONFIGS[name], "context": None}
    ref = build_torch_lm(config, seed=3)
    ours = load_ours(config, save_checkpoint(ref, tmp_path / "lm.safetensors", "published"))
    codes = random_codes(config, batch=2, steps=16, seed=4)
    delayed = delay_sequence(ours.cfg.delays, mx.array(codes, dtype=mx.int32), ours.initial_tokens(2))
    delayed = mx.concatenate([ours.initial_tokens(2), delayed], axis=2)
    batch_text = np.array(ours.forward_text(delayed[:, :, :-1])[1])
    batch_audio = np.array(ours.forward_depformer(delayed[:, :, 1:], ours.forward_text(delayed[:, :, :-1])[0]))
    stream_text, stream_audio = teacher_forced_stream(ours, codes)
    assert np.abs(stream_text - batch_text).max() <= 1e-5
    assert np.abs(stream_audio - batch_audio).max() <= 1e-5


def torch_stream(ref, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """torch moshi's own streaming path (ring KV cache of `context` steps), teacher-forced."""
    from moshi.models.lm_utils import _delay_sequence
    from moshi.utils.compile import no_compile

    B, K, T = codes.shape
    initial = ref._get_initial_token().expand(B, -1, -1)
    delayed = _delay_sequence(ref.delays, torch.from_numpy(codes), initial)
    delayed = torch.cat([initial, delayed], dim=2)
    text, audio = [], []
    with torch.no_grad(), no_compile(), ref.streaming(B):
        for t in range(T):
            hidden, text_logits = ref.forward_text(delayed[:, :, t : t + 1])
            per_k = []
            with ref.depformer.streaming(B):
                for k in range(ref.dep_q):
                    tok = delayed[:, k : k + 1, t + 1 : t + 2]
                    per_k.append(ref.forward_depformer(k, tok, hidden)[:, 0, 0])
            text.append(text_logits[:, 0, 0].numpy())
            audio.append(torch.stack(per_k, 1).numpy())
    return np.stack(text, axis=1), np.stack(audio, axis=2)


@pytest.mark.parametrize("name", ["moshi_like", "gqa_bias"])
def test_ring_cache_matches_torch_streaming(name, tmp_path):
    context = 8
    config = {**CONFIGS[name], "context": context}
    ref = build_torch_lm(config, seed=5)
    ours = load_ours(config, save_checkpoint(ref, tmp_path / "lm.safetensors", "published"))
    codes = random_codes(config, batch=1, steps=5 * context, seed=6)
    ref_text, ref_audio = torch_stream(ref, codes)
    got_text, got_audio = teacher_forced_stream(ours, codes)
    diff = max(np.abs(got_text - ref_text).max(), np.abs(got_audio - ref_audio).max())
    print(f"{name}: ring streaming max-abs {diff:.2e} over {5 * context} steps")
    assert diff <= ATOL
    # After the window is full, ring attention differs from unbounded attention: the
    # comparison above is only meaningful if the window really bit.
    unbounded = load_ours({**config, "context": None}, tmp_path / "lm.safetensors")
    free_text, _ = teacher_forced_stream(unbounded, codes)
    assert np.abs(free_text[:, context:] - ref_text[:, context:]).max() > 1e-3


def test_ring_cache_memory_is_flat(tmp_path):
    config = {**CONFIGS["moshi_like"], "context": 8}
    ours = Lm(LmConfig.from_kyutai_json(config))
    cache = ours.make_cache()
    tokens = mx.array(random_codes(config, batch=1, steps=1, seed=0), dtype=mx.int32)
    sizes = []
    for t in range(100):
        hidden, logits = ours.step(tokens, cache)
        mx.eval(hidden, logits, [(c.keys, c.values) for c in cache])
        sizes.append(sum(c.nbytes for c in cache))
    assert cache[0].offset == 100
    assert len(set(sizes[8:])) == 1, "cache memory grew after the ring filled"


def test_bf16_runs_and_tracks_fp32(tmp_path):
    config = CONFIGS["moshi_like"]
    ref = build_torch_lm(config, seed=7)
    path = save_checkpoint(ref, tmp_path / "lm.safetensors", "published")
    codes = mx.array(random_codes(config, batch=1, steps=10, seed=8))
    full = load_ours(config, path, mx.float32)(codes)
    half = load_ours(config, path, mx.bfloat16)
    assert half.text_linear.weight.dtype == mx.bfloat16
    out = half(codes)
    assert out.logits.dtype == mx.bfloat16
    a = np.array(out.logits.astype(mx.float32))
    b = np.array(full.logits)
    scale = np.nanmax(np.abs(b))
    assert np.nanmax(np.abs(a - b)) <= 0.1 * scale
    # The bf16 model agrees with torch's bf16 model within bf16 resolution.
    with torch.no_grad():
        ref_bf16 = ref.to(torch.bfloat16)(torch.from_numpy(np.array(codes)).long())
    c = ref_bf16.logits.float().numpy()
    assert np.nanmax(np.abs(a - c)) <= 0.1 * scale
