"""LoRA equals torch moshi's `moshi/modules/lora.py`: logits, loss, gradients, merged weights;
adapters and fused weights exported to Kyutai's torch layout load in torch moshi with equal logits."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from conftest import require
from mlx.utils import tree_flatten

torch = require("torch")
require("moshi")

from gen_reference import torch_and_ours  # noqa: E402
from lm_reference import CONFIGS, random_codes  # noqa: E402
from test_loss import torch_loss  # noqa: E402

from moshi_mlx.modules.lora import LoRALinear, apply_lora, fuse_lora, lora_modules  # noqa: E402
from moshi_mlx.weights.adapters import load_adapters, save_adapters  # noqa: E402
from moshi_mlx.weights.common import WeightsError  # noqa: E402
from moshi_mlx.weights.export_torch import save_kyutai_torch  # noqa: E402

RANK, SCALING = 4, 2.0


def torch_with_lora(config, tmp_path, seed):
    """A random torch LMModel with random (non-zero) LoRA layers, and our Lm loaded from its base
    checkpoint plus its LoRA state dict (as moshi-finetune's `lora.safetensors` spells it)."""
    from moshi.modules.lora import replace_all_linear_with_lora
    from safetensors.torch import save_file

    ref, ours = torch_and_ours(config, tmp_path, seed=seed)
    replace_all_linear_with_lora(ref, RANK, SCALING)
    gen = torch.Generator().manual_seed(seed + 1)
    lora = {}
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2 / np.sqrt(p.shape[-1]))
                lora[name] = p.detach().clone()
    folder = tmp_path / "ft" / "consolidated"
    folder.mkdir(parents=True)
    save_file(lora, str(folder / "lora.safetensors"))
    (folder / "config.json").write_text(
        json.dumps({**config, "lora": True, "lora_rank": RANK, "lora_scaling": SCALING})
    )
    load_adapters(ours, tmp_path / "ft")  # a moshi-finetune checkpoint folder
    return ref, ours


def torch_logits(ref, codes: np.ndarray):
    from moshi.utils.compile import no_compile

    with torch.no_grad(), no_compile():
        out = ref(torch.from_numpy(codes))
    return out.text_logits.float().numpy(), out.logits.float().numpy(), out.mask.numpy()


def max_logit_diff(ours, ref_logits, codes) -> float:
    out = ours(mx.array(codes))
    text, audio, mask = ref_logits
    dt = np.abs(np.nan_to_num(np.array(out.text_logits)) - np.nan_to_num(text)).max()
    da = np.abs(np.where(mask[..., None], np.array(out.logits) - audio, 0.0)).max()
    return float(max(dt, da))


def test_lora_logits_loss_gradients_and_merge_match_torch(tmp_path):
    config = CONFIGS["moshi_like"]
    ref, ours = torch_with_lora(config, tmp_path, seed=31)
    assert len(lora_modules(ours)) == sum(isinstance(m, torch.nn.Linear) for m in ref.modules()) // 3
    codes = random_codes(config, batch=2, steps=16, seed=32)
    assert max_logit_diff(ours, torch_logits(ref, codes), codes) <= 1e-4

    # Loss and the gradients of every LoRA weight (the base frozen, as in training).
    t_total, _, _ = torch_loss(ref, codes, 100.0, 0.5)
    t_total.backward()
    ours.freeze()
    for m in lora_modules(ours).values():
        m.lora_A.unfreeze()
        m.lora_B.unfreeze()
    loss, grads = nn.value_and_grad(ours, lambda m, c: m.loss(c, 100.0, 0.5).total)(ours, mx.array(codes))
    assert abs(float(loss) - t_total.item()) <= 1e-5 * abs(t_total.item())
    flat = dict(tree_flatten(grads))
    t_grads = {n: p.grad.numpy() for n, p in ref.named_parameters() if ".lora_" in n}
    assert set(flat) == set(t_grads)
    for name, t in t_grads.items():
        err = np.abs(np.array(flat[name]) - t).max() / np.abs(t).max()
        assert err <= 1e-4, f"{name}: relative gradient error {err:.2e}"

    # Merged weights equal torch's merge_weight.
    merged = {p: np.array(m.merged().weight) for p, m in lora_modules(ours).items()}
    for name, module in ref.named_modules():
        if type(module).__name__ == "LoRALinear":
            np.testing.assert_allclose(merged[name], module.merge_weight().numpy(), rtol=0, atol=1e-6)


def test_fused_export_and_adapter_export_load_in_torch(tmp_path):
    from moshi.models.loaders import get_moshi_lm

    config = CONFIGS["schedule_low_rank"]
    ref, ours = torch_with_lora(config, tmp_path, seed=41)
    codes = random_codes(config, batch=1, steps=12, seed=42)
    ref_logits = torch_logits(ref, codes)
    base = tmp_path / "lm.safetensors"  # the base checkpoint torch_and_ours wrote
    # 1. Our adapters, written in torch naming, load into torch LMModel with LoRA.
    save_adapters(ours, tmp_path / "adapter")
    lm_kwargs = json.loads((tmp_path / "adapter" / "config.json").read_text())
    t_lora = get_moshi_lm(base, lm_kwargs, dtype=torch.float32, lora_weights=tmp_path / "adapter" / "lora.safetensors")
    assert max_logit_diff(ours, torch_logits(t_lora.eval(), codes), codes) <= 1e-4
    # 2. Fused, exported in Kyutai's layout, loaded by get_moshi_lm: same logits as ours and torch's.
    fuse_lora(ours)
    assert not lora_modules(ours)
    assert max_logit_diff(ours, ref_logits, codes) <= 1e-4
    save_kyutai_torch(ours, tmp_path / "export", dtype=mx.float32)
    kw = json.loads((tmp_path / "export" / "config.json").read_text())
    kw.pop("moshi_name")
    t_fused = get_moshi_lm(tmp_path / "export" / "model.safetensors", kw, dtype=torch.float32).eval()
    assert max_logit_diff(ours, torch_logits(t_fused, codes), codes) <= 1e-4


def test_qlora_on_quantized_base_and_merge(tmp_path):
    mx.random.seed(0)
    base = nn.Linear(64, 32, bias=True)
    q = nn.QuantizedLinear.from_linear(base, group_size=32, bits=4)
    layer = LoRALinear(q, rank=4, scaling=2.0)
    layer.lora_B.weight = mx.random.normal(layer.lora_B.weight.shape) * 0.1
    x = mx.random.normal((3, 64))
    y = layer(x)
    dense = layer.merged(quantize=False)
    assert isinstance(dense, nn.Linear)
    np.testing.assert_allclose(np.array(dense(x)), np.array(y), atol=1e-4)
    requant = layer.merged()
    assert isinstance(requant, nn.QuantizedLinear) and requant.bits == 4
    assert float(mx.abs(requant(x) - y).max()) < 0.2 * float(mx.abs(y).max())


def test_bad_adapter_is_a_clear_error(tmp_path):
    config = CONFIGS["moshi_like"]
    _, ours = torch_and_ours(config, tmp_path, seed=51)
    with pytest.raises(WeightsError, match="no lora.safetensors"):
        load_adapters(ours, tmp_path)
    mx.save_safetensors(
        str(tmp_path / "a.safetensors"),
        {"nope.lora_A.weight": mx.zeros((4, 64)), "nope.lora_B.weight": mx.zeros((8, 4))},
    )
    with pytest.raises(WeightsError, match="names no Linear"):
        load_adapters(ours, tmp_path / "a.safetensors")
    mx.save_safetensors(
        str(tmp_path / "b.safetensors"),
        {"text_linear.lora_A.weight": mx.zeros((4, 63)), "text_linear.lora_B.weight": mx.zeros((8, 4))},
    )
    with pytest.raises(WeightsError, match="do not fit"):
        load_adapters(ours, tmp_path / "b.safetensors")
    assert apply_lora(ours, 2, 1.0) == 39  # every Linear once ...
    assert apply_lora(ours, 2, 1.0) == 0  # ... and never a LoRA layer's own Linears
