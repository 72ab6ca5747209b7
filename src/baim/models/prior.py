"""The latent prior each task samples from at generation time.

After training, a Gaussian is fitted to the posterior codes (z sampled from q(z|x)) of the
task's common data. Coordinates no squad encoder speaks for stay N(0, 1) in those codes, so
the fit keeps them as they are. Sampling N(0, I) instead is reported beside it, since the
fitted prior is what closes the gap between a VAE's aggregate posterior and its nominal prior.

Its form is the model's ``prior_rank``: ``None`` a full covariance (D² numbers: 64 KB at
D = 128, more than a small learner's adapter and gate together); ``0`` a diagonal one (D
numbers); ``r > 0`` a diagonal plus rank-r factor (the covariance's r leading principal
directions, D·(r + 1) numbers). A compact model sent within a tight byte budget uses one of
the compact forms, so the prior does not cost more than the learner it describes.
"""

from __future__ import annotations

import torch
from torch import nn


class LatentPrior(nn.Module):
    mean: torch.Tensor  # buffers, saved with the model; which of the scales exist depends on the rank
    scale_tril: torch.Tensor
    scale: torch.Tensor
    factor: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, dim: int, rank: int | None = None):
        super().__init__()
        if rank is not None and not 0 <= rank < max(dim, 1):
            raise ValueError(f"a prior's rank is None (full covariance) or 0..{dim - 1}, got {rank}")
        self.rank = rank
        self.register_buffer("mean", torch.zeros(dim))
        if rank is None:
            self.register_buffer("scale_tril", torch.eye(dim))
        else:
            self.register_buffer("scale", torch.ones(dim))
            if rank:
                self.register_buffer("factor", torch.zeros(dim, rank))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def dim(self) -> int:
        return int(self.mean.numel())

    @torch.no_grad()
    def fit(self, codes: torch.Tensor, jitter: float = 1e-4) -> None:
        codes = codes.double()
        mean = codes.mean(0)
        eye = torch.eye(self.dim, dtype=codes.dtype)
        cov = torch.cov(codes.T).reshape(self.dim, self.dim) + jitter * eye
        self.mean.copy_(mean.float())
        if self.rank is None:
            self.scale_tril.copy_(torch.linalg.cholesky(cov).float())
        elif self.rank == 0:
            self.scale.copy_(cov.diagonal().sqrt().float())
        else:  # the r leading principal directions; the diagonal takes what they leave
            values, vectors = torch.linalg.eigh(cov)
            top = slice(self.dim - self.rank, self.dim)
            factor = vectors[:, top] * values[top].clamp_min(0).sqrt()
            rest = (cov.diagonal() - factor.pow(2).sum(1)).clamp_min(jitter)
            self.factor.copy_(factor.float())
            self.scale.copy_(rest.sqrt().float())
        self.fitted.fill_(True)

    def sample(self, n: int, generator: torch.Generator | None = None, standard: bool = False) -> torch.Tensor:
        eps = torch.randn(n, self.dim, generator=generator)
        if standard:
            return eps
        if self.rank is None:
            return self.mean + eps @ self.scale_tril.T
        z = self.mean + eps * self.scale
        if self.rank:
            z = z + torch.randn(n, self.rank, generator=generator) @ self.factor.T
        return z

    @torch.no_grad()
    def grow(self, dim: int) -> None:
        """Extend to a larger latent: new coordinates are N(0, 1), independent of the rest."""
        if dim < self.dim:
            raise ValueError("a latent prior cannot shrink")
        d = self.dim
        mean = torch.zeros(dim)
        mean[:d] = self.mean
        self.mean = mean
        if self.rank is None:
            tril = torch.eye(dim)
            tril[:d, :d] = self.scale_tril
            self.scale_tril = tril
            return
        scale = torch.ones(dim)
        scale[:d] = self.scale
        self.scale = scale
        if self.rank:
            factor = torch.zeros(dim, self.rank)
            factor[:d] = self.factor
            self.factor = factor
