"""Samplers: greedy, temperature, top-k, top-p; seeded reproducibility."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from moshi_mlx.sampling import greedy, make_sampler, top_k_filter, top_p_filter


def random_logits(batch: int = 4, vocab: int = 64, seed: int = 0) -> mx.array:
    return mx.array(np.random.default_rng(seed).normal(size=(batch, vocab)).astype(np.float32) * 3)


def draw(sampler, logits: mx.array, n: int, seed: int = 0) -> np.ndarray:
    keys = mx.random.split(mx.random.key(seed), n)
    return np.stack([np.array(sampler(logits, keys[i])) for i in range(n)])  # (n, B)


def test_temperature_zero_is_greedy():
    logits = random_logits()
    expected = np.argmax(np.array(logits), axis=-1)
    assert make_sampler(0.0) is greedy
    assert np.array_equal(np.array(make_sampler(0.0, top_k=5)(logits)), expected)
    assert np.array_equal(np.array(greedy(logits)), expected)
    # A tiny temperature concentrates all mass on the argmax too.
    assert (draw(make_sampler(1e-4), logits, 20) == expected).all()


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_never_leaves_the_top_k(k):
    logits = random_logits(batch=3, vocab=50, seed=1)
    allowed = np.argsort(-np.array(logits), axis=-1)[:, :k]
    samples = draw(make_sampler(2.0, top_k=k), logits, 300)
    for b in range(3):
        assert set(samples[:, b]) <= set(allowed[b])
    if k > 1:  # a high temperature visits every allowed token
        assert all(len(set(samples[:, b])) == k for b in range(3))
    kept = np.isfinite(np.array(top_k_filter(logits, k)))
    assert (kept.sum(axis=-1) == k).all()


def test_top_k_keeps_exactly_k_on_ties():
    logits = mx.array([[1.0, 2.0, 2.0, 2.0, 0.0]])
    assert int(np.isfinite(np.array(top_k_filter(logits, 2))).sum()) == 2


@pytest.mark.parametrize("p", [0.3, 0.6, 0.9])
def test_top_p_mass(p):
    logits = random_logits(batch=2, vocab=40, seed=2)
    probs = np.array(mx.softmax(logits, axis=-1))
    kept = np.isfinite(np.array(top_p_filter(logits, p)))
    for b in range(2):
        order = np.argsort(-probs[b])
        mass_before = np.cumsum(probs[b][order]) - probs[b][order]
        expected = order[mass_before <= p]  # torch moshi's rule: drop once the mass before exceeds p
        assert set(np.flatnonzero(kept[b])) == set(expected)
        assert probs[b][kept[b]].sum() >= p  # the nucleus holds at least p of the mass
        # ...and is minimal: without its least likely member it would hold less than p.
        assert probs[b][kept[b]].sum() - probs[b][expected[-1]] <= p
    samples = draw(make_sampler(1.0, top_p=p), logits, 300)
    for b in range(2):
        assert set(samples[:, b]) <= set(np.flatnonzero(kept[b]))


def test_sampling_follows_the_tempered_distribution():
    logits = mx.array([[0.0, 1.0, 2.0, -1.0]])
    temp = 1.5
    samples = draw(make_sampler(temp), logits, 4000, seed=3)[:, 0]
    freq = np.bincount(samples, minlength=4) / len(samples)
    expected = np.array(mx.softmax(logits / temp, axis=-1))[0]
    assert np.abs(freq - expected).max() < 0.03


def test_fixed_key_is_reproducible():
    logits = random_logits(batch=8, vocab=100, seed=4)
    for sampler in (make_sampler(0.8, top_k=25), make_sampler(1.0, top_p=0.9), make_sampler(0.7)):
        a, b = draw(sampler, logits, 20, seed=9), draw(sampler, logits, 20, seed=9)
        assert np.array_equal(a, b)
        assert not np.array_equal(a, draw(sampler, logits, 20, seed=10))
    # Without a key, the global state drives it: seeding it reproduces the draws.
    sampler = make_sampler(1.0, top_k=50)
    mx.random.seed(123)
    first = [np.array(sampler(logits)) for _ in range(5)]
    mx.random.seed(123)
    assert all(np.array_equal(x, np.array(sampler(logits))) for x in first)


def test_compiled_equals_uncompiled():
    logits = random_logits(batch=4, vocab=80, seed=5)
    for kwargs in (dict(temp=0.8, top_k=10), dict(temp=0.9, top_p=0.8), dict(temp=0.7, top_k=20, top_p=0.5)):
        compiled, plain = make_sampler(**kwargs), make_sampler(**kwargs, compile=False)
        assert np.array_equal(draw(compiled, logits, 30), draw(plain, logits, 30))


def test_invalid_parameters_raise():
    with pytest.raises(ValueError, match="temperature"):
        make_sampler(-1.0)
    with pytest.raises(ValueError, match="top_k"):
        make_sampler(1.0, top_k=-2)
    with pytest.raises(ValueError, match="top_p"):
        make_sampler(1.0, top_p=1.5)
