"""The IWAE likelihood bound: a proper discretised density, bits/dim, bound ≥ ELBO, tightening in k."""

import math

import numpy as np
import pytest
import torch

from baim.config import Recipe
from baim.edge.train import train_learner
from baim.learners import StagedVAE, tier_spec
from baim.metrics import bits_per_dim, discretised_gaussian_log_prob, iwae_nll, observation_sigma
from baim.metrics.likelihood import BIN
from baim.models import BAIM, evaluate, nll_bpd
from conftest import trained_learners


@pytest.mark.parametrize("sigma", [0.005, 0.05, 0.358, 3.0])
@pytest.mark.parametrize("mean", [-0.3, 0.0, 0.37, 1.0, 1.4])
def test_discretised_gaussian_sums_to_one_over_the_256_levels(sigma, mean):
    x = (torch.arange(256, dtype=torch.float32) / 255).view(256, 1, 1, 1)
    logp = discretised_gaussian_log_prob(x, torch.full_like(x, mean), sigma)
    assert torch.isfinite(logp).all()
    assert float(torch.logsumexp(logp, 0).exp()) == pytest.approx(1.0, abs=1e-9)


def test_bits_per_dim_known_answers():
    assert bits_per_dim(1024 * math.log(256), 1024) == pytest.approx(8.0)
    # A model that ignores z (decoder outputs 0.5, q = p): the bound is exact for every k, and
    # an image of all-128 pixels costs -log2 of the central bin's mass, erf(bin / (2σ√2)).
    sigma = observation_sigma(0.00025, 16)
    x = torch.full((1, 1, 4, 4), 128 / 255)
    mu, logvar = torch.zeros(1, 3), torch.zeros(1, 3)
    exact = -math.log2(math.erf(BIN / (2 * sigma * math.sqrt(2))))
    for k in (1, 7, 64):
        nll = iwae_nll(x, mu, logvar, lambda z: torch.full((len(z), 1, 4, 4), 128 / 255), sigma, k)
        assert float(bits_per_dim(nll, 16)) == pytest.approx(exact, rel=1e-6)


def test_observation_sigma_makes_the_objective_the_negative_elbo():
    # −log N(x; x̂, σ²) per image = P·MSE / (2σ²) + const = MSE / β + const with σ² = βP/2
    beta, dims = 0.00025, 1024
    sigma = observation_sigma(beta, dims)
    assert dims / (2 * sigma**2) == pytest.approx(1 / beta)
    with pytest.raises(ValueError, match="kld_weight > 0"):
        observation_sigma(0.0, dims)


def _toy(seed: int = 0, n: int = 48, d: int = 3):
    """A linear-sigmoid decoder from a d-dim latent to 4×4 images, images drawn from it, and a
    deliberately poor posterior (the prior): the IWAE gap is large, so tightening shows."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, d, generator=g) * 2.0

    def decode(z):
        return torch.sigmoid(z @ w.T).view(len(z), 1, 4, 4)

    z_true = torch.randn(n, d, generator=g)
    x = torch.round((decode(z_true) + 0.05 * torch.randn(n, 1, 4, 4, generator=g)).clamp(0, 1) * 255) / 255
    return x, torch.zeros(n, d), torch.zeros(n, d), decode


def _elbo_nats(x, mu, logvar, decode, sigma, draws, seed):
    """ELBO per image: Monte-Carlo reconstruction term (``draws`` samples), analytic KL(q ‖ N(0, I))."""
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    z = mu.repeat(draws, 1) + torch.randn(draws * n, mu.shape[1], generator=g) * torch.exp(0.5 * logvar).repeat(
        draws, 1
    )
    rec = discretised_gaussian_log_prob(x.repeat(draws, 1, 1, 1), decode(z), sigma).view(draws, n).mean(0)
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(1).double()
    return rec - kl


def _bound(x, mu, logvar, decode, sigma, k, repeats, seed):
    """The k-sample bound per image, averaged over ``repeats`` independent estimates."""
    r = repeats
    nll = iwae_nll(
        x.repeat(r, 1, 1, 1),
        mu.repeat(r, 1),
        logvar.repeat(r, 1),
        decode,
        sigma,
        k,
        torch.Generator().manual_seed(seed),
        max_rows=1 << 16,
    )
    return nll.view(r, len(x)).mean(0)


def test_iwae_k1_is_the_elbo_and_the_bound_tightens_with_k():
    x, mu, logvar, decode = _toy()
    sigma = 0.3  # the toy's images have 16 values; a σ of the size the objective gives 32×32 images
    neg_elbo = float(-_elbo_nats(x, mu, logvar, decode, sigma, draws=500, seed=1).mean())
    assert float(_bound(x, mu, logvar, decode, sigma, 1, 500, seed=2).mean()) == pytest.approx(neg_elbo, rel=0.01)
    bounds = [float(_bound(x, mu, logvar, decode, sigma, k, 8, seed=3).mean()) for k in (1, 4, 16, 64, 256)]
    assert all(b < a for a, b in zip(bounds, bounds[1:])), bounds
    assert bounds[-1] < neg_elbo - 10, (bounds, neg_elbo)  # nats per image: far tighter than the ELBO


def test_iwae_chunking_does_not_change_the_bound():
    x, mu, logvar, decode = _toy(n=5)
    sigma = observation_sigma(0.00025, 16)
    whole = iwae_nll(x, mu, logvar, decode, sigma, 64, torch.Generator().manual_seed(0), max_rows=10_000)
    chunked = iwae_nll(x, mu, logvar, decode, sigma, 64, torch.Generator().manual_seed(0), max_rows=10)
    assert torch.allclose(whole, chunked, rtol=1e-6)


@pytest.fixture(scope="module")
def learners(fmnist):
    """An untrained small learner and one trained 2 epochs on 400 images."""
    torch.manual_seed(0)
    untrained = StagedVAE(tier_spec("small")).eval()
    trained = StagedVAE(tier_spec("small"))
    train_learner(trained, fmnist.train.load(list(range(400))), Recipe(epochs=2))
    return untrained, trained.eval()


@pytest.mark.integration
def test_learner_bound_is_below_its_negative_elbo_and_training_lowers_it(fmnist, learners):
    untrained, trained = learners
    test = fmnist.test.load(list(range(16)))
    x = torch.from_numpy(test).float() / 255
    sigma = observation_sigma(0.00025, 1024)
    mu, logvar = trained.encode(x)
    with torch.no_grad():
        neg_elbo_bpd = float(bits_per_dim(-_elbo_nats(x, mu, logvar, trained.decode, sigma, 32, 0).mean(), 1024))
    b64 = nll_bpd(trained, test, k=64)
    assert b64 < neg_elbo_bpd
    assert nll_bpd(trained, test, k=256) <= b64 + 1e-3
    assert b64 < nll_bpd(untrained, test, k=64) - 0.5


def test_baim_of_one_learner_has_that_learners_bound(fmnist):
    (learner,) = trained_learners(["small"])
    baim = BAIM.from_learners([learner], [0], ["t"], top_k=1).eval()
    test = fmnist.test.load(list(range(16)))
    assert nll_bpd(baim, test, k=16, seed=4) == pytest.approx(nll_bpd(learner, test, k=16, seed=4), rel=1e-5)


@pytest.mark.integration
def test_evaluate_reports_nll_bpd(fmnist, learners):
    _, trained = learners
    test = fmnist.test.load(list(range(40)))
    real, baseline = test[:16], test[16:32]
    m = evaluate(trained, test, real, baseline, "domain", nll_count=20).metrics
    assert m["nll_bpd"] == pytest.approx(nll_bpd(trained, test[:20]))
    assert 0 < m["nll_bpd"] < 8 and np.isfinite(m["test_loss"])
    assert not any(k.startswith("own_") for k in m)  # no own test set given
    # an edge's own test set is scored by the same procedures: given the task's, the same numbers
    own = evaluate(trained, test, real, baseline, "domain", nll_count=20, own_test=test).metrics
    assert own["own_nll_bpd"] == pytest.approx(m["nll_bpd"]) and own["own_mse"] == pytest.approx(m["mse"])
    assert own["own_test_loss"] == pytest.approx(m["test_loss"])
    # and on a different set, different numbers (the set is really used)
    other = evaluate(trained, test, real, baseline, "domain", nll_count=20, own_test=test[::-1][:20]).metrics
    assert other["own_mse"] != pytest.approx(m["mse"], rel=1e-4)


def test_channels_last_changes_no_number_and_hands_the_model_back_as_it_was(fmnist):
    """The evaluation runs models in the channels-last layout (faster transposed convolutions
    on a CPU): the numbers are those of the default layout, and the model comes back with its
    own parameter objects in the default layout (an optimiser holding them still trains it)."""
    from baim.models.evaluation import reconstruction_metrics
    from baim.models.memory_format import channels_last

    (learner,) = trained_learners(["medium"])
    learner.eval()
    test = fmnist.test.load(list(range(24)))
    params = list(learner.parameters())
    x = torch.from_numpy(test).float() / 255
    with torch.no_grad():
        plain = learner.decode(learner.encode(x)[0])
    with channels_last(learner):
        conv = next(p for p in learner.parameters() if p.dim() == 4 and p.shape[1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        with channels_last(learner):  # re-entrant: the inner exit restores nothing
            pass
        assert not conv.is_contiguous()
        with torch.no_grad():
            fast = learner.decode(learner.encode(x)[0])
    assert torch.allclose(plain, fast, atol=1e-5)
    assert [id(p) for p in learner.parameters()] == [id(p) for p in params]
    assert all(p.is_contiguous() for p in learner.parameters())
    # the evaluation functions use it and agree with a direct computation in the default layout
    sigma = observation_sigma(0.00025, 1024)
    mu, logvar = learner.encode(x)
    direct = iwae_nll(x, mu, logvar, learner.decode, sigma, 16, torch.Generator().manual_seed(3))
    assert nll_bpd(learner, test, k=16, seed=3, batch_size=24) == pytest.approx(
        float(bits_per_dim(direct.mean(), 1024)), rel=1e-5
    )
    m = reconstruction_metrics(learner, test)
    assert m["mse"] == pytest.approx(float((plain - x).pow(2).flatten(1).mean(1).mean()), rel=1e-5)
    assert all(p.is_contiguous() for p in learner.parameters())


def test_folded_normalisation_changes_no_number_and_puts_everything_back(fmnist):
    """Scoring folds each stage's eval-mode BatchNorm into its convolution (faster on a CPU):
    the scores are those of the unfolded model to float rounding, for a learner and for a BAIM
    of learners, and afterwards the model holds the same parameter objects with the same
    values, its normalisation modules, and activations that are not in place."""
    from torch import nn

    from baim.models import folding, reconstruction_metrics
    from baim.models.folding import folded_norms

    (learner,) = trained_learners(["medium"])
    learner.train()  # scoring puts it in eval mode first, folded or not
    test = fmnist.test.load(list(range(40)))
    params = {n: (p, p.detach().clone()) for n, p in learner.named_parameters()}
    buffers = {n: b.clone() for n, b in learner.named_buffers()}
    folded = {"nll": nll_bpd(learner, test, k=8, seed=1), **reconstruction_metrics(learner, test, seed=1)}
    assert not learner.training
    folding.ENABLED = False
    try:
        plain = {"nll": nll_bpd(learner, test, k=8, seed=1), **reconstruction_metrics(learner, test, seed=1)}
        baim = BAIM.from_learners([learner], [0], ["tops"], top_k=1)
        unfolded_baim = nll_bpd(baim, test, k=8, seed=1)
    finally:
        folding.ENABLED = True
    assert nll_bpd(baim, test, k=8, seed=1) == pytest.approx(unfolded_baim, rel=1e-6)
    for k in ("nll", "test_loss", "mse"):
        assert folded[k] == pytest.approx(plain[k], rel=1e-6), k
    for n, p in learner.named_parameters():
        assert p is params[n][0] and torch.equal(p, params[n][1]), n
    assert all(torch.equal(b, buffers[n]) for n, b in learner.named_buffers())
    stages = [*learner.encoder_stages, *learner.decoder_stages]
    assert all(isinstance(s[1], nn.BatchNorm2d) and not s[2].inplace for s in stages)
    with folded_norms(learner):  # inside: one convolution per stage, the activation in place
        assert all(isinstance(s[1], nn.Identity) and s[2].inplace for s in stages)
        with folded_norms(learner):  # re-entrant: the inner exit restores nothing
            pass
        assert all(isinstance(s[1], nn.Identity) for s in stages)
    learner.train()
    with folded_norms(learner):  # training-mode statistics are not fixed: nothing is folded
        assert all(isinstance(s[1], nn.BatchNorm2d) for s in stages)
