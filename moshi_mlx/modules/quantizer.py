"""Split residual vector quantizer of Mimi: 1 semantic codebook + acoustic codebooks, (B, T, C) layout."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


class Codebook(nn.Module):
    """`bins` centroids of width `dim` (torch: `embedding_sum / max(cluster_usage, 1e-5)`)."""

    def __init__(self, dim: int, bins: int):
        super().__init__()
        self.embedding = mx.zeros((bins, dim))

    def encode(self, x: mx.array) -> mx.array:
        """Index of the nearest centroid (L2) for each row of `x` `[N, dim]`, as torch `cdist().argmin()`."""
        # torch computes the distance with one matmul of augmented vectors
        # [-2x, |x|^2, 1] . [e, 1, |e|^2], then clamps and takes the square root; doing the
        # same keeps rounding, and so near-tie decisions, as close to torch as possible.
        e = self.embedding
        x_aug = mx.concatenate([-2 * x, (x * x).sum(-1, keepdims=True), mx.ones_like(x[:, :1])], axis=-1)
        e_aug = mx.concatenate([e, mx.ones_like(e[:, :1]), (e * e).sum(-1, keepdims=True)], axis=-1)
        dist = mx.sqrt(mx.maximum(x_aug @ e_aug.T, 1e-30))
        return mx.argmin(dist, axis=-1).astype(mx.int32)

    def decode(self, codes: mx.array) -> mx.array:
        return self.embedding[codes]


class ResidualVectorQuantizer(nn.Module):
    """1x1 input projection, `n_q` residual codebooks, 1x1 output projection (no biases)."""

    def __init__(self, dim: int, input_dim: int, n_q: int, bins: int):
        super().__init__()
        self.input_proj = nn.Linear(input_dim, dim, bias=False)
        self.output_proj = nn.Linear(dim, input_dim, bias=False)
        self.codebooks = [Codebook(dim, bins) for _ in range(n_q)]

    def encode(self, x: mx.array) -> mx.array:
        """`[B, T, input_dim]` -> codes `[B, n_q, T]` (int32)."""
        B, T, _ = x.shape
        residual = self.input_proj(x).reshape(B * T, -1)
        codes = []
        for codebook in self.codebooks:
            c = codebook.encode(residual)
            residual = residual - codebook.decode(c)
            codes.append(c.reshape(B, T))
        return mx.stack(codes, axis=1)

    def decode(self, codes: mx.array) -> mx.array:
        """Codes `[B, K, T]` (K <= n_q) -> `[B, T, input_dim]`."""
        q = self.codebooks[0].decode(codes[:, 0])
        for k in range(1, codes.shape[1]):
            q = q + self.codebooks[k].decode(codes[:, k])
        return self.output_proj(q)


class SplitResidualVectorQuantizer(nn.Module):
    """`rvq_first` (semantic) and `rvq_rest` (acoustic) both quantize the same latent; decode sums them."""

    def __init__(self, dim: int, input_dim: int, n_q: int, bins: int, n_q_semantic: int = 1):
        super().__init__()
        if not 0 < n_q_semantic <= n_q:
            raise ValueError(f"n_q_semantic must be in [1, {n_q}], got {n_q_semantic}")
        self.n_q_semantic = n_q_semantic
        self.rvq_first = ResidualVectorQuantizer(dim, input_dim, n_q_semantic, bins)
        self.rvq_rest = ResidualVectorQuantizer(dim, input_dim, n_q - n_q_semantic, bins)

    def encode(self, x: mx.array) -> mx.array:
        """Latent `[B, T, input_dim]` -> codes `[B, n_q, T]`."""
        first = self.rvq_first.encode(x)
        if not self.rvq_rest.codebooks:
            return first
        return mx.concatenate([first, self.rvq_rest.encode(x)], axis=1)

    def decode(self, codes: mx.array) -> mx.array:
        """Codes `[B, K, T]` -> latent `[B, T, input_dim]`."""
        n = self.n_q_semantic
        q = self.rvq_first.decode(codes[:, :n])
        if codes.shape[1] > n:
            q = q + self.rvq_rest.decode(codes[:, n:])
        return q
