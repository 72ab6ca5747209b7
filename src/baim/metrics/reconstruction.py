"""Test loss and reconstruction quality of a learner on held-out images.

- ``test_loss``: the training objective (MSE + β·KL) with z sampled from the posterior,
  seeded so that two evaluations agree;
- ``mse`` / ``psnr``: reconstruction from z = μ (deterministic), PSNR averaged per image on
  the [0, 1] scale.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import to_float
from ..learners import StagedVAE, vae_loss


@torch.no_grad()
def evaluate_reconstruction(model: StagedVAE, images: np.ndarray, kld_weight: float = 0.00025,
                            batch_size: int = 500, seed: int = 0) -> dict[str, float]:
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    tot_loss = tot_mse = tot_psnr = 0.0
    for i in range(0, len(images), batch_size):
        x = to_float(images[i:i + batch_size])
        mu, logvar = model.encode(x)
        noise = torch.randn(mu.shape, generator=gen)
        loss, _, _ = vae_loss(model.decode(model.reparameterize(mu, logvar, noise)), x, mu, logvar, kld_weight)
        per_img = (model.decode(mu) - x).pow(2).flatten(1).mean(1)
        tot_loss += float(loss) * len(x)
        tot_mse += float(per_img.sum())
        tot_psnr += float((10 * torch.log10(1.0 / per_img.clamp_min(1e-10))).sum())
    n = len(images)
    return {"test_loss": tot_loss / n, "mse": tot_mse / n, "psnr": tot_psnr / n}
