"""The latent prior each task samples from at generation time.

After training, a full-covariance Gaussian is fitted to the posterior codes (z sampled from
q(z|x)) of the task's common data. Coordinates no squad encoder speaks for stay N(0, 1) in
those codes, so the fit keeps them as they are. Sampling N(0, I) instead is reported beside
it, since the fitted prior is what closes the gap between a VAE's aggregate posterior and
its nominal prior.
"""

from __future__ import annotations

import torch
from torch import nn


class LatentPrior(nn.Module):
    mean: torch.Tensor  # buffers, saved with the model
    scale_tril: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale_tril", torch.eye(dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def dim(self) -> int:
        return int(self.mean.numel())

    @torch.no_grad()
    def fit(self, codes: torch.Tensor, jitter: float = 1e-4) -> None:
        codes = codes.double()
        mean = codes.mean(0)
        cov = torch.cov(codes.T).reshape(self.dim, self.dim) + jitter * torch.eye(self.dim, dtype=codes.dtype)
        self.mean.copy_(mean.float())
        self.scale_tril.copy_(torch.linalg.cholesky(cov).float())
        self.fitted.fill_(True)

    def sample(self, n: int, generator: torch.Generator | None = None, standard: bool = False) -> torch.Tensor:
        eps = torch.randn(n, self.dim, generator=generator)
        if standard:
            return eps
        return self.mean + eps @ self.scale_tril.T

    @torch.no_grad()
    def grow(self, dim: int) -> None:
        """Extend to a larger latent: new coordinates are N(0, 1), independent of the rest."""
        if dim < self.dim:
            raise ValueError("a latent prior cannot shrink")
        mean, tril = torch.zeros(dim), torch.eye(dim)
        mean[: self.dim], tril[: self.dim, : self.dim] = self.mean, self.scale_tril
        self.mean, self.scale_tril = mean, tril
