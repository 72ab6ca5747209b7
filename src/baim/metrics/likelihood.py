"""An importance-weighted bound (IWAE) on the negative log-likelihood, in bits per dimension.

**Observation model.** Every model baim compares is scored under one observation model: each
8-bit pixel value v ∈ {0, …, 255} is a *discretised Gaussian* around the decoder output x̂
(the probability mass of N(x̂, σ²) over v's bin of width 1/255 in [0, 1], the two end bins
reaching to ±∞), with one fixed

    σ² = β · P / 2        (β: the objective's KL weight, P: values per image).

Why this one: the training objective ``pixel-mean MSE + β·KL`` is, up to the positive factor
P/(2σ²) = 1/β and a constant, exactly the negative ELBO of a Gaussian decoder with this σ, so
the bound scores the very model that training fitted (the discretisation aside, a better
objective value is a better ELBO). A per-model fitted σ would hand each model its own
observation model (numbers would no longer compare), and any other fixed σ would score a
likelihood no model was trained for. The discretisation turns the density into a probability
over the 256 levels images take, so the result is a true code length in bits per dimension
(≥ 0), comparable across latent sizes and architectures, unlike the test loss. For 32×32 grey
images and β = 0.00025, σ ≈ 0.36: a broad noise model, so much of every model's bits/dim is
the noise's and differences between models are small; compare them paired, on the same
images, and only between numbers taken with the same β.

**Bound.** With z_1..z_k ~ q(z|x), ``log p(x) ≥ log (1/k) Σ p(x|z_i) p(z_i) / q(z_i|x)``, with
p(z) = N(0, I). k = 1 is the ELBO (in expectation); the bound tightens as k grows. This module
knows no model: it takes the posterior (μ, log σ²) and a decoder function, so the edge learner
and the BAIM (product-of-experts posterior, top-K mixture decoder) share it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

LEVELS = 256
BIN = 1.0 / (LEVELS - 1)  # pixel value v is stored as v / 255
_LOG_2PI = math.log(2 * math.pi)


def observation_sigma(kld_weight: float, dims: int) -> float:
    """The σ under which ``MSE + kld_weight·KL`` is the negative ELBO (up to scale): √(β·P/2)."""
    if not kld_weight > 0 or dims < 1:
        raise ValueError(f"the observation σ needs kld_weight > 0 and dims ≥ 1, got {kld_weight}, {dims}")
    return math.sqrt(kld_weight * dims / 2)


def bits_per_dim(nll_nats: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """A negative log-likelihood in nats per image → bits per dimension (value)."""
    return nll_nats / (dims * math.log(2))


def discretised_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, sigma: float) -> torch.Tensor:
    """log P(x | mean) summed per image, x in [0, 1] on the 8-bit grid; computed in float64
    (the bin masses of far-off values underflow float32)."""
    level = torch.round(x.double() * (LEVELS - 1))  # snapped, so neighbouring bins share an edge
    mean = mean.double()
    half = 0.5 * BIN / sigma
    c = (level * BIN - mean) / sigma
    lo, hi = c - half, c + half
    # mass of the interior bin, taken on the side of the mean where the normal's tail is not ~1
    upper = lo > 0
    inner = torch.where(
        upper, torch.special.ndtr(-lo) - torch.special.ndtr(-hi), torch.special.ndtr(hi) - torch.special.ndtr(lo)
    )
    log_mid = torch.log(inner.clamp_min(1e-300))
    log_first = torch.special.log_ndtr(hi)  # v = 0: (−∞, 0.5/255]
    log_last = torch.special.log_ndtr(-lo)  # v = 255: [254.5/255, ∞)
    logp = torch.where(level <= 0, log_first, torch.where(level >= LEVELS - 1, log_last, log_mid))
    return logp.flatten(1).sum(1)


def _log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return (-0.5 * (_LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))).sum(-1)


@torch.no_grad()
def iwae_nll(
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor],
    sigma: float,
    k: int = 64,
    generator: torch.Generator | None = None,
    max_rows: int = 1024,
) -> torch.Tensor:
    """The IWAE bound on −log p(x) in nats, one per image of ``x`` (n, C, H, W).

    ``mu``, ``logvar`` (n, D): the posterior q(z|x); ``decode`` maps z (m, D) to x̂ (m, C, H, W)
    in [0, 1]. A coordinate where q equals the prior (μ = 0, log σ² = 0, as a BAIM's unspoken
    coordinates are) adds nothing. The k samples are decoded about ``max_rows`` rows at a time,
    so the decoders' memory does not grow with k.
    """
    if k < 1:
        raise ValueError(f"the IWAE bound needs k ≥ 1 importance samples, got {k}")
    n, d = mu.shape
    chunk = max(1, min(k, max_rows // max(n, 1)))
    log_w = []
    eps = torch.randn(n, k, d, generator=generator)  # drawn at once: chunking changes no draw
    std = torch.exp(0.5 * logvar)
    for start in range(0, k, chunk):
        m = min(chunk, k - start)
        z = mu.unsqueeze(1) + eps[:, start : start + m] * std.unsqueeze(1)  # (n, m, D)
        x_hat = decode(z.reshape(n * m, d))
        log_px = discretised_gaussian_log_prob(x.repeat_interleave(m, dim=0), x_hat, sigma).view(n, m)
        log_pz = (-0.5 * (_LOG_2PI + z.pow(2))).sum(-1).double()
        log_qz = _log_normal(z, mu.unsqueeze(1), logvar.unsqueeze(1)).double()
        log_w.append(log_px + log_pz - log_qz)
    w = torch.cat(log_w, dim=1)
    return -(torch.logsumexp(w, dim=1) - math.log(k))
