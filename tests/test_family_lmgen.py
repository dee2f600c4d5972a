"""`LmGen` with conditions, classifier-free guidance and extra heads vs torch moshi's `LMGen`: greedy
tokens equal for 100 steps, batch 1 and 2, on the scaled-down family members of test_conditioners
(Hibiki with `cfg_coef` 3 and its "very_good"/"very_bad" contrast as Kyutai's run_inference builds it,
Moshi with a summed condition, TTS's cross-attention to speaker tensors with and without guidance,
STT's end-of-speech heads through `step_with_extra_heads`)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from conftest import require
from test_conditioners import FAMILY, as_kyutai_loads_it, build_torch, save_folder, torch_conditions

from moshi_mlx.errors import InvalidArgument
from moshi_mlx.generate import LmGen
from moshi_mlx.models.conditioners import null_attributes
from moshi_mlx.sampling import make_sampler
from moshi_mlx.weights import load_lm

torch = require("torch")
require("moshi")

STEPS = 100


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    built = {}
    for name in ("hibiki", "moshi_conditioned", "stt", "tts"):
        model = build_torch(FAMILY[name], seed=1)
        folder = save_folder(model, FAMILY[name], tmp_path_factory.mktemp(name) / "model")
        built[name] = (as_kyutai_loads_it(model, FAMILY[name]), load_lm(folder, dtype=mx.float32))
    return built


def run_both(model, lm, items, batch: int, cfg_coef: float, extra: bool = False):
    """(torch tokens, our tokens) `[steps, B, 1 + dep_q]` (and extra heads), greedy, same user codes."""
    from moshi.models.lm import LMGen

    n_user = lm.cfg.n_q - lm.cfg.dep_q
    user = np.random.default_rng(batch).integers(0, lm.cfg.card, (STEPS, batch, n_user, 1))
    ct = torch_conditions(model, items) if items else None
    ref_gen = LMGen(model, use_sampling=False, cfg_coef=cfg_coef, condition_tensors=ct)
    conditions = lm.conditions(items) if items else None
    gen = LmGen(lm, make_sampler(0.0), make_sampler(0.0), batch_size=batch, conditions=conditions, cfg_coef=cfg_coef)
    ref, ours, ref_heads, our_heads = [], [], [], []
    with torch.no_grad(), ref_gen.streaming(batch):
        for t in range(STEPS):
            if extra:
                r, o = ref_gen.step_with_extra_heads(torch.tensor(user[t])), gen.step_with_extra_heads(user[t])
                if r is not None:
                    ref_heads.append(np.stack([h[:, 0].numpy() for h in r[1]]))
                    our_heads.append(np.stack([np.array(h) for h in o[1]]))
                    r, o = r[0], o[0]
            else:
                r, o = ref_gen.step(torch.tensor(user[t])), gen.step(user[t])
            assert (r is None) == (o is None)
            if r is not None:
                ref.append(r[:, :, 0].numpy())
                ours.append(np.array(o))
    return np.array(ref), np.array(ours), ref_heads, our_heads


@pytest.mark.parametrize("batch", [1, 2])
def test_hibiki_cfg_greedy_tokens_equal_torch(models, batch):
    model, lm = models["hibiki"]
    items = [{"description": "very_good"}] * batch + [{"description": "very_bad"}] * batch
    ref, ours, _, _ = run_both(model, lm, items, batch, cfg_coef=3.0)
    assert ref.shape == (STEPS - lm.cfg.max_delay, batch, 1 + lm.cfg.dep_q)
    np.testing.assert_array_equal(ours, ref)
    assert len(np.unique(ref[:, :, 1:])) > 10  # the audio streams moved


def test_conditioned_moshi_greedy_tokens_equal_torch(models):
    model, lm = models["moshi_conditioned"]
    items = [{"description": "good"}, {"description": None}]
    ref, ours, _, _ = run_both(model, lm, items, 2, cfg_coef=1.0)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("batch,cfg_coef", [(1, 1.0), (2, 2.0)])
def test_tts_cross_attention_greedy_tokens_equal_torch(models, batch, cfg_coef):
    """TTS's speaker embeddings through cross-attention (the contrast rows: absent conditions, as
    Kyutai's TTS builds them), in the compiled frame."""
    from test_conditioners import attributes

    model, lm = models["tts"]
    items = attributes("tts", batch, "none")
    if cfg_coef != 1.0:
        items = items + null_attributes(items)
    ref, ours, _, _ = run_both(model, lm, items, batch, cfg_coef=cfg_coef)
    np.testing.assert_array_equal(ours, ref)
    assert len(np.unique(ref[:, :, 1:])) > 3  # no user stream: greedy settles, but not at once


def test_stt_extra_heads_equal_torch(models):
    model, lm = models["stt"]
    ref, ours, ref_heads, our_heads = run_both(model, lm, None, 2, cfg_coef=1.0, extra=True)
    np.testing.assert_array_equal(ours, ref)
    assert len(our_heads) == len(ref) and our_heads[0].shape == (4, 2, 6)
    assert max(np.abs(a - b).max() for a, b in zip(our_heads, ref_heads)) <= 1e-5


def test_cfg_needs_contrast_rows_and_a_conditioned_model(models):
    _, lm = models["hibiki"]
    one = lm.conditions([{"description": "good"}])
    with pytest.raises(InvalidArgument, match="conditions have 1 rows, expected 2 .*contrast rows"):
        LmGen(lm, conditions=one, cfg_coef=2.0)
    with pytest.raises(InvalidArgument, match="this model is conditioned"):
        LmGen(lm)
    LmGen(lm, conditions=lm.conditions([{"description": "good"}] + null_attributes([{"description": "good"}])),
          cfg_coef=2.0)
    _, stt = models["stt"]
    with pytest.raises(InvalidArgument, match="cfg_coef != 1 needs a conditioned model"):
        LmGen(stt, cfg_coef=2.0)
