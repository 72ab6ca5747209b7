import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm

from baim.metrics import fid, frechet_distance, get_extractor


def closed_form(mu1, s1, mu2, s2):
    covmean = sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_matches_closed_form_on_known_gaussians():
    rng = np.random.default_rng(0)
    d, n = 8, 200_000
    a1, a2 = rng.normal(size=(d, d)) * 0.5, rng.normal(size=(d, d)) * 0.3
    s1, s2 = a1 @ a1.T + np.eye(d), a2 @ a2.T + 0.5 * np.eye(d)
    mu1, mu2 = np.zeros(d), np.linspace(-1, 1, d)
    x = rng.multivariate_normal(mu1, s1, size=n)
    y = rng.multivariate_normal(mu2, s2, size=n)
    expected = closed_form(mu1, s1, mu2, s2)
    got = frechet_distance(torch.from_numpy(x), torch.from_numpy(y))
    assert got == pytest.approx(expected, rel=0.02)
    # and the distance of a distribution to itself is (near) zero
    assert frechet_distance(torch.from_numpy(x), torch.from_numpy(x)) == pytest.approx(0, abs=1e-6)


def test_diagonal_case_exact_formula():
    rng = np.random.default_rng(1)
    n = 400_000
    x = rng.normal(0, 1, size=(n, 2))
    y = rng.normal(3, 2, size=(n, 2))
    # ||Δμ||² + Σ (σ1 − σ2)² = 2·9 + 2·1 = 20
    assert frechet_distance(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(20, rel=0.02)


def test_domain_extractor_accuracy_on_real_test_images(fmnist):
    """The committed classifier, measured here on the official test split (not read from its card)."""
    from baim.metrics.domain import classifier_accuracy, domain_card, load_domain_features

    net = load_domain_features().classifier
    acc = classifier_accuracy(net, fmnist.test.load(range(len(fmnist.test))), np.asarray(fmnist.test.labels))
    assert acc >= 0.90
    assert acc == pytest.approx(domain_card()["test_accuracy"], abs=0.005)  # the card tells the truth


def test_kid_is_near_zero_for_one_distribution_and_large_for_another():
    from baim.metrics import kernel_distance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g)
    same, other = kernel_distance(a, b), kernel_distance(a, b + 1.0)
    assert abs(same) < 0.05 < other
    assert kernel_distance(a, b) == same  # repeatable


def test_fid_orders_real_noise_and_reports_everything(fmnist):
    real = fmnist.test.load(np.arange(0, 400))
    other = fmnist.test.load(np.arange(400, 800))
    noise = np.random.default_rng(0).integers(0, 256, size=real.shape, dtype=np.uint8)
    r = fid(real, noise, other, "domain")
    assert r.samples == 400 and r.extractor == "domain"
    assert r.real_vs_real < r.fid / 10
    with pytest.raises(ValueError, match="equal sample counts"):
        fid(real, noise[:10], other, "domain")


def test_domain_extractor_accepts_rgb_and_other_sizes():
    net = get_extractor("domain")
    imgs = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    assert net(imgs).shape == (3, 128)


def test_inception_without_weights_says_how():
    from baim.errors import ExtractorUnavailable

    with pytest.raises(ExtractorUnavailable, match="BAIM_INCEPTION_WEIGHTS|torch-fidelity"):
        get_extractor("inception")


@pytest.mark.integration
def test_lite0_extractor_separates_real_from_noise(fmnist):
    """The optional ImageNet extractor (installed by the setup script) works end to end."""
    real = fmnist.test.load(np.arange(0, 48))
    other = fmnist.test.load(np.arange(48, 96))
    noise = np.random.default_rng(0).integers(0, 256, size=real.shape, dtype=np.uint8)
    r = fid(real, noise, other, "lite0")
    assert r.extractor == "lite0" and r.real_vs_real < r.fid / 2
