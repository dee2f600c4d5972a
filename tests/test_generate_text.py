"""Text-only (Helium) generation: one-call causal prefill + steps equals torch greedy decoding."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from conftest import require

torch = require("torch")
require("moshi")

from gen_reference import GEN_CONFIGS, HELIUM_LIKE, top2_gap, torch_and_ours  # noqa: E402

from moshi_mlx.generate import generate_text, stream_text, text_inputs  # noqa: E402
from moshi_mlx.sampling import make_sampler  # noqa: E402

CONFIGS = {"helium_like": HELIUM_LIKE, "moshi_like_ctx8": GEN_CONFIGS["moshi_like_ctx8"]}


def torch_greedy_text(ref, prompt: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """Greedy decoding by re-running torch's full (windowed, causal) forward on the whole sequence."""
    from moshi.utils.compile import no_compile

    seq = torch.from_numpy(prompt)
    gaps = []
    with no_compile(), torch.no_grad():
        for _ in range(n):
            B, T = seq.shape
            audio = torch.full((B, ref.n_q, T), ref.zero_token_id, dtype=torch.long)
            _, logits = ref.forward_text(torch.cat([seq[:, None], audio], dim=1))
            last = logits[:, 0, -1].float()
            gaps.append(float(top2_gap(last.numpy()).min()))
            seq = torch.cat([seq, last.argmax(-1, keepdim=True)], dim=1)
    return seq.numpy(), min(gaps)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_greedy_text_matches_torch(name, tmp_path):
    config = CONFIGS[name]
    ref, ours = torch_and_ours(config, tmp_path, seed=31)
    # A prompt longer than the context (8): the prefill mask must apply the window.
    prompt = np.random.default_rng(5).integers(0, config["text_card"], size=(2, 13))
    expected, gap = torch_greedy_text(ref, prompt, 40)
    got = np.array(generate_text(ours, prompt, 40))
    print(f"{name}: {int((got == expected).sum())}/{got.size} ids identical, min top-2 gap {gap:.2e}")
    assert np.array_equal(got, expected)
    assert len(np.unique(got[:, 13:])) > 5


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_prefill_equals_token_by_token(name, tmp_path):
    _, ours = torch_and_ours(CONFIGS[name], tmp_path, seed=32)
    ids = mx.array(np.random.default_rng(6).integers(0, 96, size=(2, 20)))
    cache = ours.make_cache()
    _, prefill = ours.step(text_inputs(ours, ids), cache)
    cache = ours.make_cache()
    steps = [ours.step(text_inputs(ours, ids[:, t : t + 1]), cache)[1] for t in range(20)]
    assert np.abs(np.array(prefill) - np.array(mx.concatenate(steps, axis=1))).max() <= 1e-5


def test_sampled_text_is_seeded_and_stops_at_eos(tmp_path):
    _, ours = torch_and_ours(HELIUM_LIKE, tmp_path, seed=33)
    prompt = [[1, 5, 9]]
    sampler = make_sampler(1.0, top_k=10)
    a = np.array(generate_text(ours, prompt, 25, sampler, seed=4))
    assert np.array_equal(a, np.array(generate_text(ours, prompt, 25, sampler, seed=4)))
    assert not np.array_equal(a, np.array(generate_text(ours, prompt, 25, sampler, seed=5)))
    eos = int(a[0, 3 + 4])  # whatever it produced at generated position 4 (or earlier)
    stopped = np.array(generate_text(ours, prompt, 25, sampler, seed=4, eos_id=eos))
    first = int(np.flatnonzero(a[0, 3:] == eos)[0])
    assert stopped.shape[1] == 3 + first + 1 and stopped[0, -1] == eos
    assert len(list(stream_text(ours, prompt, 0))) == 0
    with pytest.raises(ValueError, match="prompt_ids"):
        generate_text(ours, [1, 2, 3], 5)
