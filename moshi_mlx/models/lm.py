"""The Moshi language model: Helium temporal transformer over 12.5 Hz frames plus the depformer.

Inputs are `[B, K, T]` token streams, K = 1 text + n_q audio codebooks. Parameter names
mirror torch moshi's live module names (`emb.{i}`, `depformer_in.{k}`, `linears.{k}`, ...);
checkpoint spellings are translated in `moshi_mlx.weights`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from ..errors import InvalidArgument
from ..config import LmConfig
from ..modules.attention import Cache
from ..modules.kv_cache import KVCache
from ..modules.transformer import Transformer, make_norm
from .conditioners import Condition, ConditionFuser, ConditionProvider
from .loss import LossOutput, lm_loss


ZERO_TOKEN = LmConfig.zero_token_id  # -1: "no token here", embeds to an exact zero vector


def embed_with_zero_token(lookup: Callable[[mx.array], mx.array], tokens: mx.array) -> mx.array:
    """The zero-token rule, in one place: `lookup(tokens)`, with an exact zero vector where a
    token is `ZERO_TOKEN` (torch `ScaledEmbedding` with `zero_idx=-1`)."""
    is_zero = (tokens == ZERO_TOKEN)[..., None]
    y = lookup(mx.maximum(tokens, 0))
    return mx.where(is_zero, mx.array(0, dtype=y.dtype), y)  # a constant: no graph node


class ScaledEmbedding(nn.Embedding):
    """Embedding where token -1 ("zero token") gives an exact zero vector; optional low-rank table.

    With `demux`, a token `(second + 1) * num_embeddings + first` carries two streams (torch
    `demux_second_stream`, TTS's lookahead text): `out1(table[first]) + out2(table[second])`, the
    second part zero where `second` is -1; the `low_rank` projection is then unused (as in torch)."""

    def __init__(self, num_embeddings: int, dims: int, low_rank: int | None = None, demux: bool = False):
        super().__init__(num_embeddings, low_rank or dims)
        if low_rank is not None:
            self.low_rank = nn.Linear(low_rank, dims, bias=False)
        if demux:
            self.out1 = nn.Linear(low_rank or dims, dims, bias=False)
            self.out2 = nn.Linear(low_rank or dims, dims, bias=False)

    def __call__(self, tokens: mx.array) -> mx.array:
        if "out1" in self:
            return embed_with_zero_token(self._demuxed, tokens)
        y = embed_with_zero_token(lambda t: self.weight[t], tokens)
        if "low_rank" in self:  # no bias: a zero vector stays zero
            y = self.low_rank(y)
        return y

    def _demuxed(self, tokens: mx.array) -> mx.array:
        n = self.weight.shape[0]
        second = tokens // n - 1
        y = self.out1(self.weight[tokens % n])
        other = self.out2(self.weight[mx.maximum(second, 0)])
        return y + mx.where((second < 0)[..., None], mx.zeros((), dtype=other.dtype), other)

    def to_quantized(self, group_size: int | None = None, bits: int | None = None, mode: str = "affine", **kw):
        """A `QuantizedScaledEmbedding` (keeps the zero-token semantics that `nn.quantize` would drop)."""
        if "out1" in self:
            raise ValueError("a demuxing ScaledEmbedding is quantized through its `out1`/`out2` Linears, not as a whole")
        if "low_rank" in self:
            raise ValueError("a low-rank ScaledEmbedding is quantized through its `low_rank` Linear, not as a whole")
        if kw.get("quantize_input"):
            raise ValueError("quantized input is not supported for embeddings")
        return QuantizedScaledEmbedding.from_embedding(self, group_size, bits, mode)


class QuantizedScaledEmbedding(nn.QuantizedEmbedding):
    """Quantized `ScaledEmbedding`: token -1 still gives an exact zero vector."""

    def __call__(self, tokens: mx.array) -> mx.array:
        return embed_with_zero_token(super().__call__, tokens)


def delay_sequence(delays: list[int], codes: mx.array, initial: mx.array) -> mx.array:
    """Shifts stream k right by `delays[k]`, filling the gap with `initial[:, k]` (`[B, K, 1]`)."""
    B, K, T = codes.shape
    lines = []
    for k, d in enumerate(delays):
        line = codes[:, k]
        if d > 0:
            fill = mx.broadcast_to(initial[:, k], (B, min(d, T)))
            line = mx.concatenate([fill, line[:, : T - d]], axis=1) if d < T else fill
        lines.append(line)
    return mx.stack(lines, axis=1)


def undelay_sequence(delays: list[int], x: mx.array, fill: float = float("nan")) -> tuple[mx.array, mx.array]:
    """Inverse of `delay_sequence` on `[B, K, T, ...]`; returns the values and a `[B, K, T]` validity mask."""
    B, K, T = x.shape[:3]
    lines, masks = [], []
    for k, d in enumerate(delays):
        line = x[:, k]
        valid = mx.ones((B, T), dtype=mx.bool_)
        if d > 0:
            pad = mx.full((B, min(d, T), *x.shape[3:]), fill, dtype=x.dtype)
            line = mx.concatenate([line[:, d:], pad], axis=1) if d < T else pad
            valid = mx.concatenate([valid[:, : T - d], mx.zeros((B, min(d, T)), dtype=mx.bool_)], axis=1)
        lines.append(line)
        masks.append(valid)
    return mx.stack(lines, axis=1), mx.stack(masks, axis=1)


@dataclass
class LmOutput:
    """Teacher-forced outputs aligned with the input codes (torch `LMOutput`)."""

    logits: mx.array  # [B, dep_q, T, card], NaN where invalid
    mask: mx.array  # [B, dep_q, T]
    text_logits: mx.array  # [B, 1, T, text_card_out]
    text_mask: mx.array  # [B, 1, T]


class Lm(nn.Module):
    """Helium + depformer. `__call__` is the teacher-forced forward; `step`/`depformer_step` stream."""

    def __init__(self, cfg: LmConfig):
        super().__init__()
        self.cfg = cfg
        tcfg = cfg.transformer
        dim = tcfg.d_model
        self.text_emb = ScaledEmbedding(cfg.text_card + 1, dim, demux=cfg.demux_second_stream)
        self.emb = [ScaledEmbedding(cfg.card + 1, dim) for _ in range(cfg.n_q)]
        self.transformer = Transformer(tcfg)
        self.out_norm = make_norm(tcfg.norm, dim)
        self.text_linear = nn.Linear(dim, cfg.text_out_vocab, bias=cfg.bias_proj)
        if cfg.dep_q > 0:
            dcfg = cfg.depformer
            ddim = dcfg.d_model
            low_rank = cfg.depformer_low_rank_embeddings
            self.depformer_in = [nn.Linear(dim, ddim, bias=False) for _ in range(cfg.num_depformer_in)]
            self.depformer_text_emb = ScaledEmbedding(cfg.text_card + 1, ddim, low_rank, cfg.demux_second_stream)
            self.depformer_emb = [ScaledEmbedding(cfg.card + 1, ddim, low_rank) for _ in range(cfg.dep_q - 1)]
            self.depformer = Transformer(dcfg)
            self.linears = [nn.Linear(ddim, cfg.card, bias=cfg.bias_proj) for _ in range(cfg.dep_q)]
        if cfg.extra_heads_num_heads:  # e.g. STT's end-of-speech heads over the normed hidden state
            self.extra_heads = [nn.Linear(dim, cfg.extra_heads_dim, bias=False) for _ in range(cfg.extra_heads_num_heads)]
        if cfg.conditioners:
            self.condition_provider = ConditionProvider(cfg.conditioners, dim)
        self.fuser = None if cfg.fuser is None else ConditionFuser(cfg.fuser)

    def set_dtype(self, dtype: mx.Dtype, predicate=None) -> None:
        """As `nn.Module.set_dtype`, but the conditioners stay fp32 (as torch keeps them)."""
        if predicate is None:
            super().set_dtype(dtype)
        else:
            super().set_dtype(dtype, predicate)
        if "condition_provider" in self:
            self.condition_provider.set_dtype(mx.float32)

    # ----------------------------------------------------------------------------------------------
    # Conditioning and extra heads

    def conditions(self, attributes: list[dict]) -> dict[str, Condition]:
        """Condition tensors of a batch: one mapping per item, condition name -> value (see
        `models/conditioners.py`); `null_attributes(attributes)` gives the CFG contrast."""
        if "condition_provider" not in self:
            raise InvalidArgument("this model takes no conditions")
        return self.condition_provider(attributes)

    def fuse(self, conditions: dict[str, Condition] | None) -> tuple[mx.array | None, mx.array | None]:
        """(sum offset `[B, 1, dim]`, cross-attention source `[B, S, dim]`) of `conditions`, in the model's dtype."""
        if self.fuser is None:
            if conditions:
                raise InvalidArgument("this model takes no conditions")
            return None, None
        if conditions is None:
            raise InvalidArgument("this model is conditioned: pass its conditions (see Lm.conditions)")
        dtype = self.out_norm.weight.dtype  # norms are never quantized
        out = (self.fuser.get_sum(conditions), self.fuser.get_cross(conditions))
        return tuple(None if x is None else x.astype(dtype) for x in out)  # type: ignore[return-value]

    def extra_head_probs(self, hidden: mx.array) -> list[mx.array]:
        """Softmax of each extra head over the normed hidden state `[B, T, dim]` (torch `step_with_extra_heads`)."""
        if "extra_heads" not in self:
            return []
        return [mx.softmax(head(hidden).astype(mx.float32), axis=-1) for head in self.extra_heads]

    # ----------------------------------------------------------------------------------------------
    # Caches

    def make_cache(self) -> list[Cache]:
        """Temporal KV state: a ring of `context` steps (bounded memory) or a growing cache."""
        return self.transformer.make_cache()

    def make_depformer_cache(self) -> list[Cache]:
        """Depformer KV state for one frame; call `reset()` on each entry before every frame."""
        return [KVCache(causal=True, context=None, step=self.cfg.dep_q) for _ in self.depformer.layers]

    # ----------------------------------------------------------------------------------------------
    # Temporal transformer

    def initial_tokens(self, batch_size: int) -> mx.array:
        """`[B, K, 1]` tokens fed before any frame: text initial 32000-like id, audio initial `card`."""
        cfg = self.cfg
        ids = [cfg.text_initial_token_id] + [cfg.initial_token_id] * cfg.n_q
        return mx.broadcast_to(mx.array(ids, dtype=mx.int32)[None, :, None], (batch_size, cfg.num_codebooks, 1))

    def embed(self, tokens: mx.array) -> mx.array:
        """Sum of the text and audio embeddings of `tokens` `[B, K, T]` -> `[B, T, dim]`."""
        x = None
        for i, emb in enumerate(self.emb):
            e = emb(tokens[:, i + 1])
            x = e if x is None else x + e
        text = self.text_emb(tokens[:, 0])
        return text if x is None else x + text

    def forward_text(
        self, tokens: mx.array, cache: list[Cache] | None = None,
        sum_condition: mx.array | None = None, cross: mx.array | None = None,
    ) -> tuple[mx.array, mx.array]:
        """Temporal pass over `[B, K, T]` tokens -> (normed hidden `[B, T, dim]`, text logits `[B, T, V]`);
        `sum_condition`/`cross` as `fuse` returns them, for a conditioned model."""
        x = self.embed(tokens)
        if sum_condition is not None:
            x = x + sum_condition.astype(x.dtype)
        h = self.out_norm(self.transformer(x, cache) if cross is None else self.transformer(x, cache, cross))
        return h, self.text_linear(h)

    def step(
        self, tokens: mx.array, cache: list[Cache], sum_condition: mx.array | None = None, cross: mx.array | None = None
    ) -> tuple[mx.array, mx.array]:
        """One streaming temporal step on `[B, K, 1]` tokens; same as `forward_text` with a cache."""
        if tokens.ndim != 3 or tokens.shape[1] != self.cfg.num_codebooks:
            raise InvalidArgument(f"step expects tokens [B, {self.cfg.num_codebooks}, T], got {tuple(tokens.shape)}")
        return self.forward_text(tokens, cache, sum_condition, cross)

    # ----------------------------------------------------------------------------------------------
    # Depformer

    def depformer_table(self, k: int) -> nn.Module:
        """The embedding of codebook `k`'s input token (the text token for k = 0)."""
        return self.depformer_text_emb if k == 0 else self.depformer_emb[k - 1]

    def _depformer_token_emb(self, k: int, tokens: mx.array) -> mx.array:
        return self.depformer_table(k)(tokens)

    def depformer_step(self, k: int, prev_token: mx.array, hidden: mx.array, cache: list[Cache]) -> mx.array:
        """Logits `[B, card]` of audio codebook `k` given the previous token `[B]` (text for k = 0)
        and the temporal hidden state `[B, 1, dim]`. Call with k = 0, 1, ... in order on a reset cache."""
        x = self.depformer_in[self.cfg.depformer_in_index(k)](hidden)
        x = x + self._depformer_token_emb(k, prev_token[:, None])
        y = self.depformer(x, cache)
        return self.linears[k](y)[:, 0]

    def forward_depformer(self, tokens: mx.array, hidden: mx.array) -> mx.array:
        """Teacher-forced depformer on delayed `[B, K, T]` tokens -> logits `[B, dep_q, T, card]`."""
        cfg = self.cfg
        B, T, _ = hidden.shape
        inputs = []
        for k in range(cfg.dep_q):
            x = self.depformer_in[cfg.depformer_in_index(k)](hidden)
            inputs.append(x + self._depformer_token_emb(k, tokens[:, k]))
        x = mx.stack(inputs, axis=2).reshape(B * T, cfg.dep_q, -1)  # (B*T, dep_q, D)
        y = self.depformer(x)
        logits = [self.linears[k](y[:, k]).reshape(B, T, -1) for k in range(cfg.dep_q)]
        return mx.stack(logits, axis=1)

    # ----------------------------------------------------------------------------------------------
    # Teacher-forced forward (training / scoring)

    def __call__(self, codes: mx.array, conditions: dict[str, Condition] | None = None) -> LmOutput:
        """Logits for undelayed `codes` `[B, K, T]`, aligned with them (torch `LMModel.forward`);
        `conditions` (from `conditions()`) for a conditioned model."""
        cfg = self.cfg
        if codes.ndim != 3 or codes.shape[1] != cfg.num_codebooks:
            raise InvalidArgument(f"expected codes [B, {cfg.num_codebooks}, T], got {tuple(codes.shape)}")
        B = codes.shape[0]
        initial = self.initial_tokens(B)
        delayed = delay_sequence(cfg.delays, codes.astype(mx.int32), initial)
        delayed = mx.concatenate([initial, delayed], axis=2)
        hidden, text_logits = self.forward_text(delayed[:, :, :-1], None, *self.fuse(conditions))
        text_logits, text_mask = undelay_sequence(cfg.delays[:1], text_logits[:, None])
        text_mask = text_mask & (codes[:, :1] != cfg.zero_token_id)
        if cfg.dep_q == 0:
            logits = mx.zeros((B, 0, codes.shape[2], cfg.card), dtype=text_logits.dtype)
            return LmOutput(logits, mx.zeros((B, 0, codes.shape[2]), dtype=mx.bool_), text_logits, text_mask)
        logits = self.forward_depformer(delayed[:, :, 1:], hidden)
        logits, mask = undelay_sequence(cfg.delays[1 : 1 + cfg.dep_q], logits)
        mask = mask & (codes[:, 1 : 1 + cfg.dep_q] != cfg.zero_token_id)
        return LmOutput(logits, mask, text_logits, text_mask)

    def loss(
        self, codes: mx.array, first_codebook_weight: float = 1.0, text_padding_weight: float = 1.0
    ) -> LossOutput:
        """Masked cross entropy of undelayed `codes` `[B, K, T]` (see `models/loss.py`); differentiable."""
        cfg = self.cfg
        pads = (cfg.existing_text_padding_id, cfg.existing_text_end_padding_id)
        return lm_loss(self(codes), codes, cfg.dep_q, first_codebook_weight, text_padding_weight, pads)
