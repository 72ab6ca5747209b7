"""One evaluation for every generative model baim compares: edge learners, BAIMs, compact models.

Like for like: every model is scored with the same three procedures, and a
comparison only ever puts the same procedure on both sides:

- ``standard``: samples decoded from z ~ N(0, I);
- ``fitted``: samples decoded from z drawn from a full-covariance Gaussian fitted to the
  model's posterior codes of the data it was trained on (a BAIM: the cloud's common data; an
  edge learner: its own local data, fitted on the edge; a personalised model: refitted on
  local data);
- ``reconstruction``: test images passed through the model with z = μ.

Plus the test loss (the training objective on test data, seeded posterior noise),
reconstruction MSE/PSNR, and ``nll_bpd``: the IWAE bound on the test negative log-likelihood
in bits per dimension (:mod:`baim.metrics.likelihood`, one observation model for every
model). FID and KID come with their extractor, the sample count and the real-vs-real values
at that count. The generated images are returned beside the numbers,
never inside them.

An edge serves its own users, whose images follow the edge's class mix, not the task's
balanced one; given the edge's own test set (``own_test``: test images drawn with the class
mix of the edge's slice), :func:`evaluate` also scores the model there (``own_test_loss``,
``own_mse``, ``own_nll_bpd``), so a model chosen for the edge's mix is judged on it too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F

from ..data import to_float, to_uint8
from ..learners import StagedVAE, vae_loss
from ..metrics import bits_per_dim, iwae_nll, observation_sigma, scores
from .baim import BAIM
from .folding import folded_norms
from .memory_format import channels_last
from .prior import LatentPrior

PROCEDURES = ("fitted", "standard", "reconstruction")
IWAE_SAMPLES = 64  # importance samples per image of the likelihood bound
# Test images the bound is taken on in evaluate(): k decodes per image make it the slowest
# number there (a 64-image bound costs a BAIM routed to a task about 4096 top-K decodes), so
# evaluate() takes the first 64 of the test set unless told more (``nll_count``).
NLL_COUNT = 64
Model = StagedVAE | BAIM


@dataclass
class Evaluation:
    """Numbers (JSON-ready) and the images behind them, kept apart."""

    metrics: dict[str, Any]
    images: dict[str, np.ndarray] = field(default_factory=dict)


F_ = TypeVar("F_", bound=Callable[..., Any])


def _scoring(fn: F_) -> F_:
    """``fn(model, ...)``, a scoring that puts its model in eval mode, run with the model in
    eval mode from the start, in the channels-last layout (:mod:`baim.models.memory_format`)
    and with its normalisation folded into its convolutions (:mod:`baim.models.folding`): the
    same numbers to float rounding, faster on a CPU."""

    @functools.wraps(fn)
    def wrapped(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        model.eval()
        with channels_last(model), folded_norms(model):
            return fn(model, *args, **kwargs)

    return cast(F_, wrapped)


def rows_at_once(model: Model, most: int) -> int:
    """Rows to run through a model at once. A BAIM runs up to all its learners per row (about
    270 kB a row per small learner), so its rows shrink as it grows and memory stays flat in N.
    Seeded draws split into chunks of a multiple of 16 rows are the same draws, so the numbers
    do not change."""
    return most if isinstance(model, StagedVAE) else max(32, min(most, 4096 // len(model.learners) // 16 * 16))


@_scoring
@torch.no_grad()
def reconstruction_metrics(
    model: Model, images: np.ndarray, task: int = 0, kld_weight: float = 0.00025, batch_size: int = 500, seed: int = 0
) -> dict[str, float]:
    """Test loss (objective with seeded posterior noise), and MSE/PSNR from z = μ."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    loss_sum = mse_sum = psnr_sum = 0.0
    batch_size = rows_at_once(model, batch_size)
    for i in range(0, len(images), batch_size):
        x = to_float(images[i : i + batch_size])
        if isinstance(model, StagedVAE):
            mu, logvar = model.encode(x)
            noise = torch.randn(mu.shape, generator=gen)
            loss, _, _ = vae_loss(model.decode(model.reparameterize(mu, logvar, noise)), x, mu, logvar, kld_weight)
            mean_image = model.decode(mu)
        else:
            t = torch.full((len(x),), task, dtype=torch.long)
            out = model(x, t, noise=torch.randn(len(x), model.latent_dim, generator=gen))
            loss = F.mse_loss(out.x_hat, x) + kld_weight * out.kl().mean()
            mean_image = model(x, t, sample=False).x_hat
        per = (mean_image - x).pow(2).flatten(1).mean(1)
        loss_sum += float(loss) * len(x)
        mse_sum += float(per.sum())
        psnr_sum += float((10 * torch.log10(1 / per.clamp_min(1e-10))).sum())
    n = len(images)
    return {"test_loss": loss_sum / n, "mse": mse_sum / n, "psnr": psnr_sum / n}


def _posterior_and_decoder(
    model: Model, x: torch.Tensor, task: int
) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """q(z|x) and z → x̂ of a learner, or of a BAIM routed to ``task``."""
    if isinstance(model, StagedVAE):
        mu, logvar = model.encode(x)
        return mu, logvar, model.decode
    baim = model
    mu, logvar, _ = baim.posterior(x, torch.full((len(x),), task, dtype=torch.long))
    return mu, logvar, lambda z: baim.decode(z, torch.full((len(z),), task, dtype=torch.long))[0]


@_scoring
@torch.no_grad()
def nll_bpd(
    model: Model,
    images: np.ndarray,
    task: int = 0,
    kld_weight: float = 0.00025,
    k: int = IWAE_SAMPLES,
    seed: int = 0,
    batch_size: int = 64,
) -> float:
    """Mean IWAE bound (``k`` samples) on −log p(x) of ``images`` in bits per dimension, under
    the observation model that ``kld_weight``'s objective implies; a BAIM is routed to ``task``
    (its product-of-experts posterior, its top-K mixture decoder)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    dims = int(np.prod(images.shape[1:]))
    sigma = observation_sigma(kld_weight, dims)
    rows = rows_at_once(model, 1024)  # the k draws are made at once: chunking changes none
    total = 0.0
    for i in range(0, len(images), batch_size):
        x = to_float(images[i : i + batch_size])
        mu, logvar, decode = _posterior_and_decoder(model, x, task)
        total += float(iwae_nll(x, mu, logvar, decode, sigma, k, gen, max_rows=rows).sum())
    return float(bits_per_dim(total / len(images), dims))


@torch.no_grad()
def posterior_codes(model: Model, images: np.ndarray, task: int = 0, draws: int = 4, seed: int = 0) -> torch.Tensor:
    """``draws`` samples z ~ q(z|x) per image: what a latent prior is fitted to."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    x = to_float(images)
    if isinstance(model, StagedVAE):
        mu, logvar = model.encode(x)
    else:
        mu, logvar, _ = model.posterior(x, torch.full((len(x),), task, dtype=torch.long))
    return torch.cat([mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar) for _ in range(draws)])


def fit_priors(model: BAIM, images: np.ndarray, tasks: np.ndarray, seed: int = 0) -> None:
    """Fit each task's latent prior to posterior codes of its images (tasks with < 2 keep theirs)."""
    for t in range(len(model.task_names)):
        x = images[np.asarray(tasks) == t]
        if len(x) >= 2:
            model.prior(t).fit(posterior_codes(model, x, t, seed=seed))


def learner_prior(model: StagedVAE, images: np.ndarray, seed: int = 0) -> LatentPrior:
    """The fitted prior of an edge learner, from its own (local) images."""
    prior = LatentPrior(model.spec.latent_dim)
    prior.fit(posterior_codes(model, images, seed=seed))
    return prior


@torch.no_grad()
def generate(
    model: Model, n: int, seed: int = 0, standard: bool = False, task: int = 0, prior: LatentPrior | None = None
) -> torch.Tensor:
    """``n`` images in [0, 1]: z from N(0, I) (``standard``) or from the fitted prior (a BAIM's
    own for ``task``; for a learner, ``prior``)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    if isinstance(model, BAIM):
        return model.generate(task, n, gen, standard_prior=standard)
    if not standard and prior is None:
        raise ValueError("a learner's fitted-prior samples need its prior (see learner_prior)")
    z = torch.randn(n, model.spec.latent_dim, generator=gen) if standard else prior.sample(n, gen)  # type: ignore[union-attr]
    return model.decode(z)


@_scoring
@torch.no_grad()
def evaluate(
    model: Model,
    test: np.ndarray,
    real: np.ndarray,
    baseline: np.ndarray,
    extractor: str,
    task: int = 0,
    kld_weight: float = 0.00025,
    seed: int = 0,
    prior_images: np.ndarray | None = None,
    nll_count: int | None = NLL_COUNT,
    own_test: np.ndarray | None = None,
) -> Evaluation:
    """Every number of :mod:`this module <baim.models.evaluation>` for one model on one task.

    ``real`` and ``baseline`` are two disjoint real sets of equal size n (FID's reference and
    the real-vs-real floor); n images are generated per procedure and ``baseline`` is
    reconstructed. ``prior_images`` are a learner's own training images (its fitted prior);
    without them a learner is scored on ``standard`` and ``reconstruction`` only.
    ``nll_bpd`` is taken on the first ``nll_count`` test images (``None``: all of them).
    ``own_test``: the edge's own test set (its class mix), scored the same way into ``own_*``.
    """
    n = len(real)
    metrics: dict[str, Any] = reconstruction_metrics(model, test, task, kld_weight, seed=seed)
    metrics["nll_bpd"] = nll_bpd(model, test[:nll_count], task, kld_weight, seed=seed)
    images: dict[str, np.ndarray] = {}
    prior = None
    if isinstance(model, StagedVAE) and prior_images is not None:
        prior = learner_prior(model, prior_images, seed)
    if isinstance(model, BAIM) or prior is not None:
        images["fitted"] = to_uint8(generate(model, n, seed, task=task, prior=prior))
    images["standard"] = to_uint8(generate(model, n, seed, standard=True, task=task))
    x = to_float(baseline)
    if isinstance(model, StagedVAE):
        recon = model.decode(model.encode(x)[0])
    else:
        recon = model(x, torch.full((n,), task, dtype=torch.long), sample=False).x_hat
    images["reconstruction"] = to_uint8(recon)
    results = scores(real, images, baseline, extractor)
    for name, r in results.items():
        metrics[f"fid_{name}"], metrics[f"kid_{name}"] = r.fid, r.kid
    any_result = next(iter(results.values()))
    metrics.update(
        fid_real_vs_real=any_result.real_vs_real,
        kid_real_vs_real=any_result.kid_real_vs_real,
        fid_extractor=extractor,
        fid_count=n,
    )
    if own_test is not None and len(own_test):
        metrics.update(own_test_metrics(model, own_test, task, kld_weight, seed, nll_count))
    return Evaluation(metrics, images)


def own_test_metrics(
    model: Model,
    own_test: np.ndarray,
    task: int = 0,
    kld_weight: float = 0.00025,
    seed: int = 0,
    nll_count: int | None = NLL_COUNT,
) -> dict[str, float]:
    """``own_test_loss``, ``own_mse`` and ``own_nll_bpd`` on an edge's own test set (its class
    mix), by the same procedures as the task-level numbers."""
    own = reconstruction_metrics(model, own_test, task, kld_weight, seed=seed)
    return {
        "own_test_loss": own["test_loss"],
        "own_mse": own["mse"],
        "own_nll_bpd": nll_bpd(model, own_test[:nll_count], task, kld_weight, seed=seed),
    }


@torch.no_grad()
def task_accuracy(model: BAIM, images: np.ndarray, tasks: np.ndarray) -> float:
    """How often TSGate's classifier picks the right squad for a bare image."""
    if model.tsgate is None:
        raise ValueError("a compact model has no TSGate (it serves one task)")
    model.eval()
    pred = model.tsgate(to_float(images)).argmax(1).numpy()
    return float((pred == np.asarray(tasks)).mean())
