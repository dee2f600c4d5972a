"""Builds tiny checkpoints in Kyutai's published MLX layout, plus reference logits from Kyutai's code.

Two stages, two virtualenvs (Kyutai's `moshi_mlx` 0.3.0 shares our import name):
1. here (our venv, torch + torch moshi): a random torch `LMModel` for `KYUTAI_TINY`, saved in the
   published torch spelling, and `config.json`;
2. in Kyutai's venv (`--kyutai-python`, e.g. /work/venv-kyutai/bin/python, holding
   `moshi_mlx==0.3.0` installed with --no-deps on mlx 0.32.4): their `LmConfig.from_config_dict`,
   `Lm`, `load_pytorch_weights`, `set_dtype(bfloat16)`, optionally `nn.quantize`, `save_weights`
   -> `model.safetensors` (bf16), `model.q8.safetensors` (bits 8, group 64),
   `model.q4.safetensors` (bits 4, group 32). Like mlx-lm, only modules whose input width is a
   multiple of the group size are quantized (the main FFN output, 176 wide, stays bf16).
   `reference.safetensors` holds, per file and compute dtype (bf16 as saved, fp32 after
   `set_dtype(float32)`), the teacher-forced logits of Kyutai's modules, called the way their
   `Lm._sample` / `DepFormer.sample` call them, for a few single-token steps (their attention has
   no causal mask for T > 1, so only T = 1 steps are comparable).

Usage: python convert/make_kyutai_mlx_fixture.py [--out tests/assets/kyutai_mlx]
           [--kyutai-python /work/venv-kyutai/bin/python] [--seed 0] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Tiny, 7B-shaped (RoPE, RMSNorm f32, SiLU gating, multi-linear depformer with weights per step)
# and representable by Kyutai's MLX `Lm`: its main FFN width is 11 * dim / 4, which equals
# torch's 2 * int(4.125 * dim) / 3 for dim = 64. The schedule [0, 1, 1] makes two depformer
# slices share a weight set, as hibiki's schedule does.
KYUTAI_TINY = dict(
    dim=64, text_card=32, existing_text_padding_id=3, n_q=4, dep_q=3, card=16,
    num_heads=4, num_layers=2, hidden_scale=4.125, causal=True, layer_scale=None, context=8,
    max_period=10000, gating="silu", norm="rms_norm_f32", positional_embedding="rope",
    depformer_dim=32, depformer_dim_feedforward=48, depformer_num_heads=2, depformer_num_layers=2,
    depformer_layer_scale=None, depformer_multi_linear=True, depformer_context=3,
    depformer_max_period=10000, depformer_gating="silu", depformer_pos_emb="none",
    depformer_weights_per_step=True, depformer_weights_per_step_schedule=[0, 1, 1],
    delays=[0, 0, 1, 1, 0],
)
VARIANTS = {"model.safetensors": None, "model.q8.safetensors": (64, 8), "model.q4.safetensors": (32, 4)}


def torch_stage(out: Path, kyutai_python: str, seed: int, steps: int) -> None:
    """Writes the torch checkpoint and config, then runs the Kyutai stage."""
    sys.path.insert(0, str(ROOT / "tests"))
    from lm_reference import build_torch_lm, save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(KYUTAI_TINY, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(build_torch_lm(KYUTAI_TINY, seed=seed), Path(tmp) / "torch.safetensors", "published")
        cmd = [kyutai_python, __file__, "--stage", "kyutai", "--torch-ckpt", str(ckpt), "--out", str(out),
               "--seed", str(seed), "--steps", str(steps)]
        subprocess.run(cmd, check=True, cwd=tempfile.gettempdir())


def kyutai_stage(out: Path, torch_ckpt: Path, seed: int, steps: int) -> None:
    """In Kyutai's venv: their MLX model, their weight import, their quantization and forward."""
    import mlx.core as mx
    import mlx.nn as nn
    import moshi_mlx
    import numpy as np
    from moshi_mlx.models.lm import Lm, LmConfig

    assert "site-packages" in moshi_mlx.__file__, f"not Kyutai's moshi_mlx: {moshi_mlx.__file__}"
    cfg_dict = json.loads((out / "config.json").read_text())
    cfg = LmConfig.from_config_dict(cfg_dict)

    rng = np.random.default_rng(seed + 1)
    K, dep_q = 1 + cfg_dict["n_q"], cfg_dict["dep_q"]
    inputs = rng.integers(0, cfg_dict["card"] + 1, size=(1, K, steps))
    inputs[:, 0] = rng.integers(0, cfg_dict["text_card"] + 1, size=(1, steps))
    dep_inputs = rng.integers(0, cfg_dict["card"] + 1, size=(1, dep_q, steps))
    dep_inputs[:, 0] = rng.integers(0, cfg_dict["text_card"] + 1, size=(1, steps))
    refs: dict[str, mx.array] = {
        "inputs": mx.array(inputs.astype(np.int32)),
        "dep_inputs": mx.array(dep_inputs.astype(np.int32)),
    }

    def build(quant: tuple[int, int] | None) -> Lm:
        model = Lm(cfg)
        model.load_pytorch_weights(str(torch_ckpt), cfg, strict=True)
        model.set_dtype(mx.bfloat16)
        if quant is not None:
            group, bits = quant
            nn.quantize(model, group_size=group, bits=bits,
                        class_predicate=lambda p, m: hasattr(m, "to_quantized") and m.weight.shape[-1] % group == 0)
        return model

    def run(model: Lm) -> tuple[mx.array, mx.array]:
        text_all, audio_all = [], []
        for t in range(steps):
            tok = refs["inputs"][:, :, t : t + 1]  # [B, K, 1]
            xs = model.text_emb(tok[:, 0])
            for i, emb in enumerate(model.audio_embs):
                xs = xs + emb(tok[:, i + 1])
            out_t = model.out_norm(model.transformer(xs, cache=model.transformer_cache))
            text_all.append(model.text_linear(out_t)[:, 0])
            for c in model.depformer_cache:
                c.reset()
            per_k = []
            for k, s in enumerate(model.depformer.slices):
                ys = s.linear_in(out_t) + s.emb(refs["dep_inputs"][:, k, t : t + 1])
                ys = s.transformer(ys, cache=model.depformer_cache)
                per_k.append(s.linear_out(ys)[:, 0])
            audio_all.append(mx.stack(per_k, axis=1))
        for c in model.transformer_cache:
            c.reset()
        return mx.stack(text_all, axis=1).astype(mx.float32), mx.stack(audio_all, axis=2).astype(mx.float32)

    for name, quant in VARIANTS.items():
        model = build(quant)
        model.save_weights(str(out / name))
        for dtype_name, dtype in (("bf16", mx.bfloat16), ("fp32", mx.float32)):
            model.set_dtype(dtype)
            text, audio = run(model)
            refs[f"{name}.{dtype_name}.text_logits"] = text  # [B, T, text_card]
            refs[f"{name}.{dtype_name}.audio_logits"] = audio  # [B, dep_q, T, card]
    producer = "Kyutai moshi_mlx 0.3.0 (convert/make_kyutai_mlx_fixture.py)"
    mx.save_safetensors(str(out / "reference.safetensors"), refs, metadata={"seed": str(seed), "producer": producer})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "assets" / "kyutai_mlx")
    parser.add_argument("--kyutai-python", default="/work/venv-kyutai/bin/python")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--stage", choices=["torch", "kyutai"], default="torch")
    parser.add_argument("--torch-ckpt", type=Path)
    args = parser.parse_args()
    if args.stage == "torch":
        torch_stage(args.out.resolve(), args.kyutai_python, args.seed, args.steps)
    else:
        kyutai_stage(args.out.resolve(), args.torch_ckpt, args.seed, args.steps)


if __name__ == "__main__":
    main()
