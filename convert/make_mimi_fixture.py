"""Builds a random-weight torch Mimi with the published hyper-parameters and saves it as safetensors.

The file uses the published key spelling (`self_attn.in_proj_weight`, `self_attn.out_proj.weight`),
so torch moshi, rustymimi and our loader all read it. Three fixes keep random Mimi informative:
- conv biases are zeroed (random biases make the latents nearly constant);
- conv weights are rescaled layer by layer on the speech asset so that activations have unit
  scale (output audio ~0.1), making absolute tolerances meaningful (random init shrinks them
  to ~1e-4);
- each codebook level is initialised from the residual latents of real speech (the shipped
  asset, at two time shifts) plus noise, so every codebook emits many codes.

Usage: python convert/make_mimi_fixture.py OUT.safetensors [--seed 0]
"""

from __future__ import annotations

import argparse
import wave
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

SPEECH = Path(__file__).resolve().parent.parent / "tests" / "assets" / "speech_24k.wav"
FRAME = 1920


def read_wav(path: Path = SPEECH) -> np.ndarray:
    """16-bit mono wav -> float32 [T] in [-1, 1]."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2 or f.getnchannels() != 1:
            raise ValueError(f"{path}: expected 16-bit mono")
        data = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    return data.astype(np.float32) / 32768.0


def build_torch_mimi(seed: int = 0, speech: np.ndarray | None = None, num_codebooks: int = 8):
    """Returns a torch `MimiModel` (eval, fp32) with seeded random weights and speech-fitted codebooks."""
    from moshi.models import loaders

    torch.manual_seed(seed)
    model = loaders.get_mimi(None, num_codebooks=num_codebooks)
    speech = read_wav() if speech is None else speech
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") and (".conv." in name or ".convtr." in name):
                p.zero_()
        views = _speech_views(speech)
        with _unit_scale(model.encoder, target=1.0):
            emb = model.encoder(views)  # already rescaled by the hooks
        (emb,) = model.encoder_transformer(emb)
        latent = model._to_framerate(emb)
        _init_codebooks(model, latent, seed)
        codes = model.quantizer.encode(latent)
        with _unit_scale(model.decoder, target=0.1):
            model.decode(codes)
    model.eval()
    return model


@contextmanager
def _unit_scale(module: torch.nn.Module, target: float):
    """While active, the first forward of each conv rescales its weight to give an output std of 1
    (`target` for the last conv); layers run in order, so each sees already rescaled inputs."""
    convs = [m for m in module.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]

    def hook(m, _inputs, out):
        scale = (target if m is convs[-1] else 1.0) / out.std().clamp(min=1e-12)
        m.weight.mul_(scale)
        if m.bias is not None:
            m.bias.mul_(scale)
        return out * scale

    handles = [m.register_forward_hook(hook) for m in convs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _speech_views(speech: np.ndarray) -> torch.Tensor:
    """The speech at two shifts (half a frame apart), as a batch [2, 1, T] of whole frames."""
    views = []
    for shift in (0, 960):
        x = speech[shift:]
        views.append(x[: (len(x) // FRAME) * FRAME])
    n = min(len(v) for v in views)
    return torch.from_numpy(np.stack([v[:n] for v in views]))[:, None]


def _init_codebooks(model, latent: torch.Tensor, seed: int) -> None:
    """Each level's centroids: residual latent frames (picked at random) plus noise at the residuals'
    own per-dim std (with less noise, centroids are near-equidistant copies of one frame: ties)."""
    gen = torch.Generator().manual_seed(seed + 1)
    for rvq in (model.quantizer.rvq_first, model.quantizer.rvq_rest):
        residual = rvq.input_proj(latent).transpose(1, 2).reshape(-1, rvq.input_proj.out_channels)
        for layer in rvq.vq.layers:
            cb = layer._codebook
            bins = cb.embedding_sum.shape[0]
            pick = torch.randint(0, residual.shape[0], (bins,), generator=gen)
            noise = torch.randn(bins, residual.shape[1], generator=gen) * residual.std(0, keepdim=True)
            centroids = residual[pick] + noise
            cb.embedding_sum.copy_(centroids)
            cb.cluster_usage.fill_(1.0)
            cb._initialized.fill_(1.0)
            cb.register_buffer("_embedding", None, persistent=False)  # drop torch's cached codebook
            codes = torch.cdist(residual[None], cb.embedding[None])[0].argmin(-1)
            residual = residual - cb.embedding[codes]


def published_state_dict(model) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with attention keys renamed to the published spelling."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("self_attn.in_projs.0.weight", "self_attn.in_proj_weight")
        k = k.replace("self_attn.out_projs.0.weight", "self_attn.out_proj.weight")
        out[k] = v.detach().contiguous()
    return out


def save_fixture(path: str | Path, seed: int = 0):
    """Builds the model, saves it to `path`, and returns the torch model."""
    model = build_torch_mimi(seed)
    save_file(published_state_dict(model), str(path))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    save_fixture(args.out, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
