"""Kyutai's published MLX checkpoints of the Moshi LM -> our MLX parameter names.

Files: `model.safetensors` (kyutai/moshiko-mlx-bf16), `model.q8.safetensors` (-q8),
`model.q4.safetensors` (-q4). Kyutai's MLX `Lm` differs from torch (and from us) in layout:
- `audio_embs.{i}` is our `emb.{i}`; attention is one `self_attn.in_proj` / `out_proj` per layer;
- the depformer is a list of `depformer.slices.{k}`, each a full copy of the depformer transformer
  plus `linear_in` (our `depformer_in.{schedule[k]}`), `linear_out` (our `linears.{k}`) and `emb`
  (our `depformer_text_emb` for k = 0, else `depformer_emb.{k-1}`). Norms are duplicated in every
  slice; attention/gating of slice k is weight set `schedule[k]`. Duplicates must agree exactly.
Quantized files hold `<module>.weight` (uint32), `.scales` and `.biases` per quantized module; the
table below maps modules, so those three keys follow their module unchanged.
"""

from __future__ import annotations

from typing import Callable, Mapping

import mlx.core as mx

from ..config import LmConfig
from .common import WeightsError


def module_table(cfg: LmConfig) -> dict[str, str]:
    """Every module of a Kyutai MLX LM checkpoint -> the module of ours it fills."""
    table: dict[str, str] = {name: name for name in ("text_emb", "text_linear", "out_norm")}
    if cfg.demux_second_stream:
        table.update({f"text_emb.{o}": f"text_emb.{o}" for o in ("out1", "out2")})
    for i in range(cfg.n_q):
        table[f"audio_embs.{i}"] = f"emb.{i}"
    for layer in range(cfg.transformer.num_layers):
        p = f"transformer.layers.{layer}"
        table[f"{p}.self_attn.in_proj"] = f"{p}.self_attn.in_projs.0"
        table[f"{p}.self_attn.out_proj"] = f"{p}.self_attn.out_projs.0"
        for name in ("norm1", "norm2", "gating.linear_in", "gating.linear_out"):
            table[f"{p}.{name}"] = f"{p}.{name}"
    dcfg = cfg.depformer
    for k in range(cfg.dep_q):
        s = f"depformer.slices.{k}"
        table[f"{s}.linear_in"] = f"depformer_in.{cfg.depformer_in_index(k)}"
        table[f"{s}.linear_out"] = f"linears.{k}"
        emb = "depformer_text_emb" if k == 0 else f"depformer_emb.{k - 1}"
        table[f"{s}.emb"] = emb
        if cfg.depformer_low_rank_embeddings is not None:
            table[f"{s}.emb.low_rank"] = f"{emb}.low_rank"
        if cfg.demux_second_stream and k == 0:
            table.update({f"{s}.emb.{o}": f"{emb}.{o}" for o in ("out1", "out2")})
        w = dcfg.step_weight_index(k)
        gating = f"gating.{w}" if dcfg.weights_per_step else "gating"
        for layer in range(dcfg.num_layers):
            src, ours = f"{s}.transformer.layers.{layer}", f"depformer.layers.{layer}"
            table[f"{src}.self_attn.in_proj"] = f"{ours}.self_attn.in_projs.{w}"
            table[f"{src}.self_attn.out_proj"] = f"{ours}.self_attn.out_projs.{w}"
            table[f"{src}.norm1"] = f"{ours}.norm1"
            table[f"{src}.norm2"] = f"{ours}.norm2"
            table[f"{src}.gating.linear_in"] = f"{ours}.{gating}.linear_in"
            table[f"{src}.gating.linear_out"] = f"{ours}.{gating}.linear_out"
    # Conditioners and extra heads keep torch's names in Kyutai's MLX files too.
    for i in range(cfg.extra_heads_num_heads):
        table[f"extra_heads.{i}"] = f"extra_heads.{i}"
    for name, spec in (cfg.conditioners or {}).items():
        p = f"condition_provider.conditioners.{name}"
        for module in (p, f"{p}.output_proj") + ((f"{p}.embed",) if spec.get("type") == "lut" else ()):
            table[module] = module
    return table


def is_kyutai_mlx(keys: list[str]) -> bool:
    """True for key sets only Kyutai's MLX layout uses."""
    return any(
        k.startswith(("audio_embs.", "depformer.slices.")) or ".self_attn.in_proj." in k for k in keys
    )


def convert_kyutai_mlx(
    state: Mapping[str, mx.array], cfg: LmConfig, source: str = "checkpoint"
) -> tuple[dict[str, mx.array], dict[str, str], Callable[[str], str]]:
    """Maps a Kyutai MLX LM state dict (plain or quantized) to our names.

    Returns the converted weights, our key -> checkpoint key, and a function naming a missing
    key of ours in Kyutai MLX spelling. Shapes are checked later against the model (`strict_load`).
    """
    table = module_table(cfg)
    sources: dict[str, list[str]] = {}
    for mlx_module, ours in table.items():
        sources.setdefault(ours, []).append(mlx_module)

    out: dict[str, mx.array] = {}
    origin: dict[str, str] = {}
    provided: dict[str, set[str]] = {}  # Kyutai module -> its parameter names present in the file
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module not in table:
            raise WeightsError(f"{source}: unexpected key {key!r}")
        provided.setdefault(module, set()).add(param)
        ours = f"{table[module]}.{param}"
        if ours in out:
            first = out[ours]
            same = first.shape == value.shape and first.dtype == value.dtype and mx.array_equal(first, value).item()
            if not same:
                raise WeightsError(
                    f"{source}: key {key!r} differs from {origin[ours]!r}; both are copies of one weight ({ours!r})"
                )
            continue
        out[ours] = value
        origin[ours] = key

    # A weight shared by several slices must be present in every one of them.
    for ours, mlx_modules in sources.items():
        params = set().union(*(provided.get(m, set()) for m in mlx_modules))
        for m in mlx_modules:
            for param in sorted(params - provided.get(m, set())):
                raise WeightsError(f"{source}: missing key {m + '.' + param!r}")

    def spell_missing(our_key: str) -> str:
        module, _, param = our_key.rpartition(".")
        return f"{sources[module][0]}.{param}" if module in sources else our_key

    return out, origin, spell_missing
