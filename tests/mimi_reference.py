"""Shared Mimi references for the tests: the random-weight fixture, torch/rustymimi outputs, code checks.

Everything expensive is computed once per process (`functools.cache`); the safetensors fixture
is cached in the temp dir under a name keyed by the builder script, the speech asset and the
torch/moshi versions, so it is rebuilt whenever any of them changes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUILDER = ROOT / "tests" / "fixtures" / "make_mimi_fixture.py"
SPEECH = ROOT / "tests" / "assets" / "speech_24k.wav"
FRAME = 1920
SEED = 0
NEAR_TIE_REL = 1e-4


def _builder():
    spec = importlib.util.spec_from_file_location("make_mimi_fixture", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def fixture_path() -> Path:
    """Path of the random Mimi checkpoint (published key spelling), built on first use."""
    import moshi
    import torch

    h = hashlib.sha256(BUILDER.read_bytes() + SPEECH.read_bytes())
    h.update(f"{torch.__version__} {moshi.__version__} {SEED}".encode())
    path = Path(tempfile.gettempdir()) / f"moshi_mlx_mimi_fixture_{h.hexdigest()[:16]}.safetensors"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        _builder().save_fixture(tmp, SEED)
        tmp.replace(path)
    return path


@functools.cache
def torch_mimi():
    """torch moshi's `MimiModel` loaded from the fixture file, 8 codebooks, eval."""
    from moshi.models import loaders

    return loaders.get_mimi(fixture_path(), num_codebooks=8)


@functools.cache
def speech(frames: int) -> np.ndarray:
    """The first `frames` frames of the speech asset, float32 `[1, 1, frames * 1920]`."""
    wav = _builder().read_wav(SPEECH)
    if len(wav) < frames * FRAME:
        raise ValueError(f"the speech asset has only {len(wav) // FRAME} frames")
    return np.ascontiguousarray(wav[: frames * FRAME][None, None])


@dataclass
class Outputs:
    latent: np.ndarray  # [B, 512, T] pre-quantization latent at 12.5 Hz
    codes: np.ndarray  # [B, K, T]
    pcm: np.ndarray  # [B, 1, T * 1920], decoded from the reference codes of the same mode


@functools.cache
def torch_batch(frames: int) -> Outputs:
    import torch

    model = torch_mimi()
    with torch.no_grad():
        latent = model._encode_to_unquantized_latent(torch.from_numpy(speech(frames)))
        codes = model.quantizer.encode(latent)
        pcm = model.decode(codes)
    return Outputs(latent.numpy(), codes.numpy().astype(np.int32), pcm.numpy())


@functools.cache
def torch_stream(frames: int) -> Outputs:
    """torch streaming, one 1920-sample chunk (one code frame) per call."""
    import torch

    model = torch_mimi()
    pcm_in = torch.from_numpy(speech(frames))
    latents, codes, pcm = [], [], []
    with torch.no_grad():
        with model.streaming(1):
            for t in range(frames):
                lat = model._encode_to_unquantized_latent(pcm_in[..., t * FRAME : (t + 1) * FRAME])
                latents.append(lat)
                codes.append(model.quantizer.encode(lat))
        with model.streaming(1):
            for c in codes:
                pcm.append(model.decode(c))
    cat = lambda xs: torch.cat(xs, dim=-1).numpy()
    return Outputs(cat(latents), cat(codes).astype(np.int32), cat(pcm))


@functools.cache
def rust_tokenizer():
    import rustymimi

    return rustymimi.Tokenizer(str(fixture_path()), num_codebooks=8)


@dataclass
class CodeReport:
    total: int
    mismatches: int
    near_ties: int  # first mismatch of an RVQ chain at a position, distances within NEAR_TIE_REL
    consequential: int  # later levels of a chain whose earlier level already differed
    not_near_tie: list[tuple[int, int, int, float]]  # (b, k, t, relative distance gap)

    @property
    def agreement(self) -> float:
        return 1.0 - self.mismatches / self.total


def compare_codes(latent: np.ndarray, ref_codes: np.ndarray, codes: np.ndarray) -> CodeReport:
    """Classifies every code that differs from the reference's.

    At a differing (b, k, t), the residual is rebuilt from the reference latent and the reference's
    own codes of the earlier levels of that chain (level 0 alone; levels 1.. in `rvq_rest`); the
    mismatch is a near-tie when the exact distances from it to the two competing centroids
    differ by less than `NEAR_TIE_REL` relative.
    """
    import torch

    q = torch_mimi().quantizer
    B, K, T = ref_codes.shape
    diff = ref_codes != codes
    near, conseq, bad = 0, 0, []
    for b, k, t in zip(*np.nonzero(diff)):
        rvq, level, first = (q.rvq_first, 0, 0) if k < q.n_q_semantic else (q.rvq_rest, k - q.n_q_semantic, q.n_q_semantic)
        if diff[b, first:k, t].any():
            conseq += 1
            continue
        with torch.no_grad():
            x = rvq.input_proj(torch.from_numpy(latent[b : b + 1, :, t : t + 1]))[0, :, 0].double()
            for j in range(level):
                x = x - rvq.vq.layers[j]._codebook.embedding[int(ref_codes[b, first + j, t])].double()
            emb = rvq.vq.layers[level]._codebook.embedding.double()
            d_ref = torch.linalg.norm(x - emb[int(ref_codes[b, k, t])]).item()
            d_ours = torch.linalg.norm(x - emb[int(codes[b, k, t])]).item()
        gap = abs(d_ours - d_ref) / max(d_ref, 1e-30)
        if gap < NEAR_TIE_REL:
            near += 1
        else:
            bad.append((int(b), int(k), int(t), gap))
    return CodeReport(diff.size, int(diff.sum()), near, conseq, bad)


def distinct_codes(codes: np.ndarray) -> list[int]:
    """Distinct values per codebook of `[B, K, T]` codes."""
    return [len(np.unique(codes[:, k])) for k in range(codes.shape[1])]


@functools.cache
def ours():
    """Our MLX `Mimi` loaded from the fixture file (8 codebooks)."""
    from moshi_mlx.weights.mimi import load_mimi

    return load_mimi(fixture_path())


@functools.cache
def ours_batch(frames: int) -> Outputs:
    """Our batch encode of the speech, and batch decode of torch's batch codes."""
    import mlx.core as mx

    model = ours()
    latent = model.encode_latent(speech(frames))
    codes = model.quantizer.encode(latent)
    pcm = model.decode(torch_batch(frames).codes)
    mx.eval(latent, codes, pcm)
    return Outputs(np.array(latent).transpose(0, 2, 1), np.array(codes), np.array(pcm))


@functools.cache
def ours_stream(frames: int) -> Outputs:
    """Our streaming encode of the speech, and streaming decode of torch's streaming codes."""
    import mlx.core as mx

    model = ours()
    model.reset()
    pcm_in = speech(frames)
    latents, codes, pcm = [], [], []
    for t in range(frames):
        lat = model.encode_latent_step(pcm_in[..., t * FRAME : (t + 1) * FRAME])
        c = model.quantizer.encode(lat)
        mx.eval(lat, c)
        latents.append(np.array(lat))
        codes.append(np.array(c))
    ref_codes = torch_stream(frames).codes
    for t in range(frames):
        out = model.decode_step(ref_codes[..., t : t + 1])
        mx.eval(out)
        pcm.append(np.array(out))
    model.reset()
    return Outputs(
        np.concatenate(latents, axis=1).transpose(0, 2, 1), np.concatenate(codes, axis=-1), np.concatenate(pcm, axis=-1)
    )
