"""Training loss equals torch moshi's masked cross entropy; gradients are finite and match torch."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from conftest import require
from mlx.utils import tree_flatten

torch = require("torch")
require("moshi")

from gen_reference import GEN_CONFIGS, torch_and_ours  # noqa: E402
from lm_reference import CONFIGS, random_codes  # noqa: E402

RTOL = 1e-5


def torch_loss(ref, codes: np.ndarray, first_codebook_weight: float = 1.0, text_padding_weight: float = 1.0):
    """moshi's `cross_entropy` on `LMModel.forward` output, reduced as moshi-finetune does."""
    from moshi.utils.compile import no_compile
    from moshi.utils.utils import cross_entropy

    tcodes = torch.from_numpy(codes)
    with no_compile():
        out = ref(tcodes)
    text_w = out.text_mask.float()
    pad = (tcodes[:, :1] == ref.existing_text_padding_id) | (tcodes[:, :1] == ref.end_of_text_padding_id)
    text_w = torch.where(pad, text_w * text_padding_weight, text_w)
    text_ce = cross_entropy(out.text_logits, tcodes[:, :1], out.text_mask)
    audio_w = out.mask.float()
    audio_w[:, 0] *= first_codebook_weight
    audio_ce = cross_entropy(out.logits, tcodes[:, 1 : 1 + ref.dep_q], out.mask)
    text = (text_ce * text_w).sum() / text_w.sum()
    audio = (audio_ce * audio_w).sum() / audio_w.sum()
    return text + audio, text, audio


def sample_codes(config: dict, seed: int) -> np.ndarray:
    codes = random_codes(config, batch=2, steps=24, seed=seed)
    codes[0, 1, 4] = -1  # zero tokens: embedded as 0, excluded from the loss
    codes[1, 0, 7] = -1
    codes[0, 0, 2:6] = 3  # PAD text tokens (weighted separately when asked)
    return codes


def rel(a, b) -> float:
    a, b = (float(x.detach()) if isinstance(x, torch.Tensor) else float(x) for x in (a, b))
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("name", ["moshi_like", "schedule_low_rank", "gqa_bias"])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (100.0, 0.5)])
def test_loss_matches_torch(name, weights, tmp_path):
    config = CONFIGS[name]
    ref, ours = torch_and_ours(config, tmp_path, seed=21)
    codes = sample_codes(config, seed=22)
    with torch.no_grad():
        t_total, t_text, t_audio = torch_loss(ref, codes, *weights)
    got = ours.loss(mx.array(codes), *weights)
    diffs = [rel(got.total, t_total), rel(got.text, t_text), rel(got.audio, t_audio)]
    print(f"{name} weights={weights}: total {float(got.total):.6f} vs {float(t_total):.6f}, rel diffs {diffs}")
    assert max(diffs) <= RTOL
    assert abs(float(got.total) - float(got.text) - float(got.audio)) <= 1e-6 * abs(float(got.total))


def test_gradients_are_finite_and_match_torch(tmp_path):
    config = GEN_CONFIGS["moshi_7b_like"]
    ref, ours = torch_and_ours(config, tmp_path, seed=23)
    codes = sample_codes(config, seed=24)
    t_total, _, _ = torch_loss(ref, codes)
    t_total.backward()
    t_grads = {n: p.grad.numpy() for n, p in ref.named_parameters() if p.grad is not None}

    loss, grads = nn.value_and_grad(ours, lambda m, c: m.loss(c).total)(ours, mx.array(codes))
    flat = dict(tree_flatten(grads))
    assert all(np.isfinite(np.array(g)).all() for g in flat.values()), "NaN/inf gradient"
    assert rel(loss, t_total) <= RTOL
    # Same parameters, our names <- torch names (no stacked depformer weights involved here).
    pairs = {
        "text_linear.weight": "text_linear.weight",
        "emb.2.weight": "emb.2.weight",
        "linears.3.weight": "linears.3.weight",
        "depformer_in.1.weight": "depformer_in.1.weight",
        "text_emb.weight": "text_emb.weight",
    }
    for ours_name, torch_name in pairs.items():
        g, t = np.array(flat[ours_name]), t_grads[torch_name]
        err = np.abs(g - t).max() / np.abs(t).max()
        assert err <= 1e-4, f"{ours_name}: relative gradient error {err:.2e}"


def test_loss_ignores_values_at_masked_positions(tmp_path):
    config = CONFIGS["moshi_like"]
    _, ours = torch_and_ours(config, tmp_path, seed=25)
    codes = sample_codes(config, seed=26)
    base = ours.loss(mx.array(codes))
    # Changing the target behind a zero token cannot change anything: it is masked and
    # embedded as 0 (the zero token is the value itself, so change a neighbour's mask instead).
    masked = codes.copy()
    masked[0, 1, 4] = -1
    assert float(ours.loss(mx.array(masked)).total) == pytest.approx(float(base.total), rel=1e-7)
    # A real target change does change the loss.
    changed = codes.copy()
    changed[1, 2, 10] = (changed[1, 2, 10] + 1) % config["card"]
    assert float(ours.loss(mx.array(changed)).audio) != pytest.approx(float(base.audio), rel=1e-7)
