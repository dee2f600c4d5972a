"""Training loss of the Moshi LM: masked cross entropy on text and audio streams.

Definition (torch `moshi.utils.utils.cross_entropy` + moshi-finetune `compute_loss_with_mask`):
per position, `ce = logsumexp(logits) - logits[target]` in fp32; positions whose mask is False
(delay padding, zero token -1 in the codes) contribute nothing. Each part is a weighted mean
over its valid positions, `sum(w * ce) / sum(w)` with `w = mask` (optionally times
`first_codebook_weight` on audio codebook 0 and `text_padding_weight` on PAD/EPAD text
targets); `total = text + audio`.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx


@dataclass
class LossOutput:
    """Scalar losses; `total = text + audio`."""

    total: mx.array
    text: mx.array
    audio: mx.array


def masked_cross_entropy(logits: mx.array, targets: mx.array, mask: mx.array) -> mx.array:
    """Per-position cross entropy `[...]` of `logits` `[..., V]`; 0 where `mask` is False.

    Invalid positions may hold NaN logits: they are replaced before any arithmetic so that
    neither the value nor the gradient is poisoned.
    """
    x = mx.where(mask[..., None], logits.astype(mx.float32), 0.0)
    safe = mx.where(mask, targets, 0).astype(mx.int32)
    picked = mx.take_along_axis(x, safe[..., None], axis=-1)[..., 0]
    ce = mx.logsumexp(x, axis=-1) - picked
    return mx.where(mask, ce, 0.0)


def weighted_mean(ce: mx.array, weights: mx.array) -> mx.array:
    """`sum(w * ce) / sum(w)`; 0 when no position is valid."""
    total = weights.sum()
    return (ce * weights).sum() / mx.maximum(total, 1e-12)


def lm_loss(
    out,
    codes: mx.array,
    dep_q: int,
    first_codebook_weight: float = 1.0,
    text_padding_weight: float = 1.0,
    text_padding_ids: tuple[int, ...] = (),
) -> LossOutput:
    """Loss of an `LmOutput` against the undelayed `codes` `[B, 1 + n_q, T]` it was computed from."""
    codes = codes.astype(mx.int32)
    text_targets = codes[:, :1]
    text_ce = masked_cross_entropy(out.text_logits, text_targets, out.text_mask)
    text_w = out.text_mask.astype(mx.float32)
    if text_padding_weight != 1.0 and text_padding_ids:
        is_pad = mx.zeros(text_targets.shape, dtype=mx.bool_)
        for token in text_padding_ids:
            is_pad = is_pad | (text_targets == token)
        text_w = text_w * mx.where(is_pad, text_padding_weight, 1.0)
    text = weighted_mean(text_ce, text_w)
    if dep_q == 0:
        audio = mx.array(0.0)
    else:
        audio_targets = codes[:, 1 : 1 + dep_q]
        audio_ce = masked_cross_entropy(out.logits, audio_targets, out.mask)
        audio_w = out.mask.astype(mx.float32)
        if first_codebook_weight != 1.0:
            scale = mx.array([first_codebook_weight] + [1.0] * (dep_q - 1))[None, :, None]
            audio_w = audio_w * scale
        audio = weighted_mean(audio_ce, audio_w)
    return LossOutput(text + audio, text, audio)
