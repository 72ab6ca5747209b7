"""The staged convolutional VAE that every edge trains.

    x → E1 … ES → posterior head (μ, log σ²) → z → latent-in → D1 … DS → image head → x̂

Stages are kept as separate modules in ``ModuleList``s because the BAIM reads and mixes the
raw output of individual stages across learners; nothing here hides them behind one
``nn.Sequential``. Each encoder stage halves the resolution, each decoder stage doubles it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spec import LearnerSpec

LOGVAR_CLAMP = (-10.0, 10.0)


def _encoder_stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


def _decoder_stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)
    )


class StagedVAE(nn.Module):
    """A learner: encoder stages, posterior head, latent-in map, decoder stages, image head."""

    def __init__(self, spec: LearnerSpec):
        super().__init__()
        self.spec = spec
        w = list(spec.stage_widths)
        r = spec.bottleneck_size
        self.encoder_stages = nn.ModuleList(_encoder_stage(cin, cout) for cin, cout in zip([spec.channels] + w[:-1], w))
        self.posterior_head = nn.Linear(w[-1] * r * r, 2 * spec.latent_dim)
        self.latent_in = nn.Linear(spec.latent_dim, w[-1] * r * r)
        dec = w[::-1] + [w[0]]
        self.decoder_stages = nn.ModuleList(_decoder_stage(cin, cout) for cin, cout in zip(dec[:-1], dec[1:]))
        self.image_head = nn.Conv2d(w[0], spec.channels, 3, padding=1)

    # -- encoder side -------------------------------------------------------------------
    def encoder_shapes(self) -> list[tuple[int, int]]:
        """(channels, side) of each encoder stage's output."""
        return [(c, self.spec.image_size >> (i + 1)) for i, c in enumerate(self.spec.stage_widths)]

    def decoder_shapes(self) -> list[tuple[int, int]]:
        """(channels, side) of each decoder stage's output."""
        w, r = list(self.spec.stage_widths), self.spec.bottleneck_size
        return [(c, r << (i + 1)) for i, c in enumerate(w[::-1][1:] + [w[0]])]

    def posterior(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Last encoder feature map → (μ, clamped log σ²)."""
        mu, logvar = self.posterior_head(h.flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_CLAMP)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x
        for stage in self.encoder_stages:
            h = stage(h)
        return self.posterior(h)

    # -- decoder side -------------------------------------------------------------------
    def latent_to_map(self, z: torch.Tensor) -> torch.Tensor:
        r = self.spec.bottleneck_size
        return self.latent_in(z).view(len(z), self.spec.stage_widths[-1], r, r)

    def to_image(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.image_head(h))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.latent_to_map(z)
        for stage in self.decoder_stages:
            h = stage(h)
        return self.to_image(h)

    # -- VAE --------------------------------------------------------------------------
    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = torch.randn_like(mu)
        return mu + noise * torch.exp(0.5 * logvar)

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar, noise)), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.spec.latent_dim, generator=generator)
        return self.decode(z)


def vae_loss(
    x_hat: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, kld_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's objective: pixel-mean MSE + β · batch-mean KL(q(z|x) ‖ N(0, I))."""
    mse = F.mse_loss(x_hat, x)
    kld = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
    return mse + kld_weight * kld, mse, kld
