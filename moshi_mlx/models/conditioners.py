"""Conditioning of the LM (torch moshi `conditioners/`): values -> condition tensors -> model inputs.

A conditioned model (Hibiki's `description`, TTS's `cfg`/`speaker_wavs`, ...) names its conditioners in
config.json (`conditioners`: `{name: {"type": "lut"|"tensor", "lut"|"tensor": {...}}}`) and how each
reaches the transformer (`fuser`: `sum` adds a `[B, 1, dim]` offset to every step's input, `cross`
makes a cross-attention source `[B, S, dim]`). Parameters mirror torch's names
(`condition_provider.conditioners.{name}.{embed,output_proj,learnt_padding}`); the fuser has none.

An absent value (None, or a tensor with an all-false mask) is the "null" condition that classifier-free
guidance contrasts with: the conditioner then outputs its `learnt_padding`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import mlx.core as mx
import mlx.nn as nn

from ..errors import InvalidArgument
from ..modules.transformer import sin_embedding


@dataclass(frozen=True)
class Condition:
    """A conditioner's output (torch `ConditionType`): `tensor` `[B, T, dim]`, `mask` `[B, T]` (valid positions)."""

    tensor: mx.array
    mask: mx.array


def hash_trick(word: str, vocab_size: int) -> int:
    """Index of `word` in a LUT without a list of possible values (torch `hash_trick`: sha256 mod vocab)."""
    import hashlib  # here: it loads libcrypto, which streaming never needs

    return int(hashlib.sha256(word.encode("utf-8")).hexdigest(), 16) % vocab_size


class _Conditioner(nn.Module):
    """`output_proj` (no bias) then `learnt_padding` where the mask is false (torch `BaseConditioner`)."""

    def __init__(self, dim: int, output_dim: int):
        super().__init__()
        self.output_proj = nn.Linear(dim, output_dim, bias=False)
        self.learnt_padding = mx.zeros((1, 1, output_dim))

    def _finish(self, x: mx.array, mask: mx.array) -> Condition:
        x = self.output_proj(x)
        m = mask.astype(x.dtype)[..., None]
        return Condition(x * m + self.learnt_padding.astype(x.dtype) * (1 - m), mask)


class LutConditioner(_Conditioner):
    """A lookup table over a few string values (e.g. Hibiki's `description`: very_bad ... very_good)."""

    def __init__(self, n_bins: int, dim: int, output_dim: int, possible_values: Sequence[str] | None = None,
                 tokenizer: str = "noop", init_scale: float = 1.0):
        super().__init__(dim, output_dim)
        if tokenizer != "noop":
            raise InvalidArgument(f"LUT conditioner tokenizer {tokenizer!r} is not supported (only 'noop')")
        self.embed = nn.Embedding(n_bins + 1, dim)  # the last row is the padding (absent value)
        self.n_bins = n_bins
        self.possible_values = None if possible_values is None else list(possible_values)

    def token(self, value: str | None) -> int:
        """The table row of `value` (`n_bins` for None)."""
        if value is None:
            return self.n_bins
        if self.possible_values is None:
            return hash_trick(value, self.n_bins)
        if value not in self.possible_values:
            raise InvalidArgument(f"condition value {value!r} is not one of {self.possible_values}")
        return self.possible_values.index(value)

    def __call__(self, values: Sequence[str | None]) -> Condition:
        tokens = mx.array([[self.token(v)] for v in values], dtype=mx.int32)
        mask = mx.array([[v is not None] for v in values])
        return self._finish(self.embed(tokens), mask)


class TensorConditioner(_Conditioner):
    """A tensor given by the caller (e.g. TTS speaker embeddings `[B, T, dim]`), projected to the model width."""

    def __init__(self, dim: int, output_dim: int):
        super().__init__(dim, output_dim)
        self.dim = dim

    def __call__(self, values: Sequence[tuple[mx.array, mx.array] | mx.array | None]) -> Condition:
        """`values`: per batch item a `[1, T, dim]` tensor, a (tensor, mask `[1, T]`) pair, or None (absent)."""
        items = []
        for v in values:
            if v is None:
                v = (mx.zeros((1, 1, self.dim)), mx.zeros((1, 1), dtype=mx.bool_))
            elif isinstance(v, mx.array):
                v = (v, mx.ones(v.shape[:2], dtype=mx.bool_))
            if v[0].ndim != 3 or v[0].shape[0] != 1 or v[0].shape[2] != self.dim:
                raise InvalidArgument(f"a tensor condition must be [1, T, {self.dim}], got {tuple(v[0].shape)}")
            items.append(v)
        T = max(t.shape[1] for t, _ in items)  # torch `TensorCondition.cat`: zero-pad to the longest
        tensor = mx.concatenate([mx.pad(t, [(0, 0), (0, T - t.shape[1]), (0, 0)]) for t, _ in items])
        mask = mx.concatenate([mx.pad(m.astype(mx.bool_), [(0, 0), (0, T - m.shape[1])]) for _, m in items])
        return self._finish(tensor.astype(self.output_proj.weight.dtype), mask)


def make_conditioner(name: str, spec: Mapping[str, Any], output_dim: int) -> _Conditioner:
    """A conditioner from its config.json entry (`{"type": "lut", "lut": {...}}`)."""
    kind = spec.get("type")
    kwargs = dict(spec.get(kind) or {})
    kwargs.pop("output_dim", None)
    kwargs.pop("device", None)
    for key in ("force_linear", "pad_empty", "learn_padding", "output_bias"):
        default = {"force_linear": True, "pad_empty": True, "learn_padding": True, "output_bias": False}[key]
        if kwargs.pop(key, default) != default:
            raise InvalidArgument(f"conditioner {name!r}: {key} other than {default} is not supported")
    try:
        if kind == "lut":
            return LutConditioner(output_dim=output_dim, **kwargs)
        if kind == "tensor":
            return TensorConditioner(output_dim=output_dim, **kwargs)
    except TypeError as e:
        raise InvalidArgument(f"conditioner {name!r}: {e}") from e
    raise InvalidArgument(f"conditioner {name!r}: type {kind!r} is not supported (lut, tensor)")


class ConditionProvider(nn.Module):
    """The named conditioners of a model (torch `ConditionProvider`)."""

    def __init__(self, specs: Mapping[str, Mapping[str, Any]], output_dim: int):
        super().__init__()
        self.conditioners = {name: make_conditioner(name, spec, output_dim) for name, spec in specs.items()}

    def __call__(self, attributes: Sequence[Mapping[str, Any]]) -> dict[str, Condition]:
        """Condition tensors for a batch: one mapping per item, name -> value (str/None for a LUT,
        tensor/(tensor, mask)/None for a tensor conditioner); every conditioner needs a value."""
        out = {}
        for name, conditioner in self.conditioners.items():
            missing = [i for i, a in enumerate(attributes) if name not in a]
            if missing:
                raise InvalidArgument(f"condition {name!r} is missing (batch item {missing[0]})")
            out[name] = conditioner([a[name] for a in attributes])
        unknown = sorted({k for a in attributes for k in a} - set(self.conditioners))
        if unknown:
            raise InvalidArgument(f"unknown condition {unknown[0]!r} (the model has: {', '.join(self.conditioners)})")
        return out


def null_attributes(attributes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The same conditions, all absent (torch `dropout_all_conditions`): the CFG contrast."""
    return [{name: None for name in a} for a in attributes]


class ConditionFuser:
    """How condition tensors reach the transformer (torch `ConditionFuser`; `sum` and `cross` only)."""

    def __init__(self, spec: Mapping[str, Any]):
        spec = dict(spec)
        self.sum: list[str] = list(spec.pop("sum", []) or [])
        self.cross: list[str] = list(spec.pop("cross", []) or [])
        if spec.pop("prepend", []):
            raise InvalidArgument("fuser 'prepend' is not supported (torch moshi refuses it too)")
        self.cross_pos_emb = bool(spec.pop("cross_attention_pos_emb", False))
        self.cross_pos_emb_scale = float(spec.pop("cross_attention_pos_emb_scale", 1.0))
        if spec:
            raise InvalidArgument(f"unexpected fuser key {sorted(spec)[0]!r}")

    def get_sum(self, conditions: Mapping[str, Condition]) -> mx.array | None:
        """The `[B, 1, dim]` offset added to every step's input, or None."""
        total = None
        for name in self.sum:
            c = conditions[name].tensor
            if c.shape[1] != 1:
                raise InvalidArgument(f"a summed condition has one position; {name!r} has {c.shape[1]}")
            total = c if total is None else total + c
        return total

    def get_cross(self, conditions: Mapping[str, Condition]) -> mx.array | None:
        """The cross-attention source `[B, S, dim]` (conditions concatenated in time), or None."""
        parts = [conditions[name].tensor for name in self.cross]
        if not parts:
            return None
        cross = parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=1)
        if self.cross_pos_emb:
            # torch builds it in fp32 (default max period 10000) and casts to the source's dtype.
            pos = sin_embedding(0, cross.shape[1], cross.shape[-1], 10_000.0, mx.float32).astype(cross.dtype)
            cross = cross + self.cross_pos_emb_scale * pos
        return cross
