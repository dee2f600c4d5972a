"""A random-weight Mimi that still behaves like a codec: diverse codes, audible output.

Plain random weights make a useless Mimi: activations shrink layer after layer and every frame
quantizes to the same code. `informative_mimi` fixes that the way the test fixture
(`tests/fixtures/make_mimi_fixture.py`) does for torch, on a synthetic speech-like signal
(`speech_like`, so that nothing beyond numpy is needed):
- conv biases are zeroed;
- conv weights are rescaled layer by layer, in forward order, so that each conv's output has
  unit standard deviation on the signal (0.1 for the decoder's last conv: audio at a normal level);
- each codebook level is initialised from the residual latents of the signal (at two time
  shifts) plus noise at the residuals' own scale, so every level emits many different codes.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import mlx.core as mx
import numpy as np

from ..config import MimiConfig, SeanetConfig, TransformerConfig
from ..models.mimi import Mimi
from ..modules.conv import StreamingConv1d, StreamingConvTranspose1d

_CONVS = (StreamingConv1d, StreamingConvTranspose1d)
# Seconds of signal the weights are fitted on (short: MLX convs of the full-size Mimi are slow on a CPU).
FIT_SECONDS = 2.4
# (F1, F2, F3) in Hz of a few vowels: a, e, i, o, u.
_VOWELS = np.array([[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410], [300, 870, 2240]])


def small_mimi_config(num_codebooks: int = 8) -> MimiConfig:
    """Mimi's structure (24 kHz, 12.5 Hz frames of 2048-entry codes, causal) at a size that runs in
    a fraction of real time on a CPU; not the published architecture, so rustymimi cannot run it."""
    return MimiConfig(
        seanet=SeanetConfig(dimension=64, n_filters=8),
        transformer=TransformerConfig(
            d_model=64, num_heads=4, num_layers=2, dim_feedforward=128, causal=True, context=250,
            positional_embedding="rope", max_period=10_000.0, gating="none", norm="layer_norm", layer_scale=0.01,
        ),
        quantizer_dimension=32,
        quantizer_n_q=num_codebooks,
        num_codebooks=num_codebooks,
    )


def speech_like(seconds: float = 4.0, sample_rate: int = 24_000, seed: int = 0) -> np.ndarray:
    """A voiced, syllabic signal with moving pitch and vowel formants, and noisy consonants between
    syllables; float32 `[samples]`, peak 0.5. A stand-in for speech, not speech."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    # Syllables of 120-280 ms separated by 40-120 ms consonant gaps.
    bounds, pos = [], 0.0
    while pos < seconds:
        length, gap = rng.uniform(0.12, 0.28), rng.uniform(0.04, 0.12)
        bounds.append((pos + gap, min(pos + gap + length, seconds)))
        pos += gap + length
    voiced = np.zeros(n)
    formants = np.empty((n, 3))
    formants[:] = _VOWELS[0]
    for start, end in bounds:
        a, b = int(start * sample_rate), int(end * sample_rate)
        if b <= a:
            continue
        voiced[a:b] = np.hanning(b - a)
        v0, v1 = _VOWELS[rng.integers(len(_VOWELS), size=2)]  # a diphthong: formants glide
        w = np.linspace(0, 1, b - a)[:, None]
        formants[a:b] = (1 - w) * v0 + w * v1
    f0 = 150 + 35 * np.sin(2 * np.pi * 0.6 * t + rng.uniform(0, 2 * np.pi))  # Hz, a slow intonation
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    wave = np.zeros(n)
    for k in range(1, int(4500 / f0.min()) + 1):
        freq = k * f0
        gain = sum(np.exp(-(((freq - formants[:, i]) / (80 + 40 * i)) ** 2)) for i in range(3)) / np.sqrt(k)
        wave += gain * np.where(freq < 0.45 * sample_rate, np.sin(k * phase), 0.0)
    wave *= voiced
    noise = np.diff(rng.standard_normal(n + 1)) * 0.05 * (1 - voiced) * (rng.random(n) < 0.9)
    wave += noise * np.repeat(rng.random(n // 2400 + 1) < 0.5, 2400)[:n]  # fricatives in some gaps
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


@contextmanager
def _unit_scale(module, target: float) -> Iterator[None]:
    """While active, the first batch call of each conv of the SEANet `module` rescales its weight
    (bias is zero) so its output std is 1 (`target` for `module.final_conv`) and returns the
    rescaled output; convs run in order, so each sees already rescaled inputs."""
    convs = [m for _, m in module.named_modules() if isinstance(m, _CONVS)]
    index = {id(c): i for i, c in enumerate(convs)}
    last = index[id(module.final_conv)]
    done: set[int] = set()
    originals = {cls: cls.__call__ for cls in _CONVS}

    def wrap(original):
        def call(self, x):
            out = original(self, x)
            i = index.get(id(self))
            if i is None or i in done:
                return out
            done.add(i)
            scale = (target if i == last else 1.0) / max(float(out.std()), 1e-12)
            self.weight = self.weight * scale
            return out * scale

        return call

    for cls, original in originals.items():
        cls.__call__ = wrap(original)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.__call__ = original


def _views(signal: np.ndarray, frame_size: int) -> mx.array:
    """The signal at two shifts (half a frame apart), as a batch `[2, 1, T]` of whole frames."""
    views = [signal[shift:] for shift in (0, frame_size // 2)]
    n = min(len(v) for v in views) // frame_size * frame_size
    return mx.array(np.stack([v[:n] for v in views])[:, None])


def _init_codebooks(model: Mimi, latent: mx.array, rng: np.random.Generator) -> None:
    for rvq in (model.quantizer.rvq_first, model.quantizer.rvq_rest):
        residual = np.array(rvq.input_proj(latent)).reshape(-1, rvq.input_proj.weight.shape[0])
        for codebook in rvq.codebooks:
            bins = codebook.embedding.shape[0]
            pick = rng.integers(0, residual.shape[0], size=bins)
            noise = rng.standard_normal((bins, residual.shape[1])) * residual.std(0, keepdims=True)
            codebook.embedding = mx.array((residual[pick] + noise).astype(np.float32))
            codes = np.array(codebook.encode(mx.array(residual)))
            residual = residual - np.array(codebook.decode(mx.array(codes)))


def informative_mimi(cfg: MimiConfig, seed: int = 0, signal: np.ndarray | None = None) -> Mimi:
    """A `Mimi(cfg)` with seeded random weights made informative on `signal` (default: `FIT_SECONDS`
    of `speech_like()`).

    `cfg.num_codebooks` should equal `cfg.quantizer_n_q` so every level is fitted (and can be saved)."""
    mx.random.seed(seed)
    model = Mimi(cfg)
    for _, conv in model.named_modules():
        if isinstance(conv, _CONVS) and "bias" in conv:
            conv.bias = mx.zeros_like(conv.bias)
    signal = speech_like(FIT_SECONDS, cfg.sample_rate, seed) if signal is None else signal
    views = _views(signal, cfg.frame_size)
    with _unit_scale(model.encoder, target=1.0):
        latent = model.encode_latent(views)
    mx.eval(latent)
    _init_codebooks(model, latent, np.random.default_rng(seed + 1))
    with _unit_scale(model.decoder, target=0.1):
        mx.eval(model.decode(model.quantizer.encode(latent)))
    mx.eval(model.parameters())
    return model
