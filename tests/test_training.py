"""Short real-data training: the loss must fall and samples must beat pure noise in FID."""

import numpy as np
import pytest
import torch

from baim.config import Recipe
from baim.data.layout import make_layout
from baim.edge import build_learner, train_learner
from baim.learners import StagedVAE, tier_spec
from baim.metrics import fid
from baim.models import evaluate, reconstruction_metrics
from baim.presets import get_preset


@pytest.mark.integration
def test_real_training_loss_falls_and_fid_beats_noise(fmnist):
    layout = make_layout(fmnist, get_preset("quick"), seed=0)
    e = layout.edges[1]  # a footwear edge
    model = build_learner("small", fmnist, seed=0)
    test = fmnist.test.load(layout.test[layout.task_names[e.task]])
    before = reconstruction_metrics(model, test)["test_loss"]
    hist = train_learner(model, fmnist.train.load(e.indices), Recipe(epochs=4), eval_images=test)
    losses = [r["test_loss"] for r in hist.epochs]
    assert losses[-1] < before * 0.5, (before, losses)
    assert hist.skipped_steps == 0 and hist.images_per_second > 0
    real, baseline = layout.fid_sets(fmnist, layout.task_names[e.task], 300)
    f = evaluate(model, test, real, baseline, "domain", prior_images=fmnist.train.load(e.indices)).metrics
    noise = np.random.default_rng(0).integers(0, 256, size=real.shape, dtype=np.uint8)
    noise_fid = fid(real, noise, baseline).fid
    for procedure in ("fitted", "standard", "reconstruction"):
        assert f[f"fid_{procedure}"] < 0.8 * noise_fid, (procedure, f, noise_fid)
        assert f["fid_real_vs_real"] < f[f"fid_{procedure}"]
    assert f["kid_real_vs_real"] < f["kid_standard"]


def test_training_is_deterministic_for_a_seed():
    x = (np.random.default_rng(0).random((96, 1, 32, 32)) * 255).astype(np.uint8)

    def once() -> StagedVAE:
        torch.manual_seed(5)
        m = StagedVAE(tier_spec("small"))
        train_learner(m, x, Recipe(epochs=2, batch_size=32, seed=5))
        return m

    a, b = once(), once()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_non_finite_steps_are_skipped_and_counted():
    x = (np.random.default_rng(0).random((64, 1, 32, 32)) * 255).astype(np.uint8)
    m = StagedVAE(tier_spec("small"))
    calls = {"n": 0}
    orig = m.forward

    def poisoned(inp, noise=None):
        calls["n"] += 1
        out = orig(inp, noise)
        if calls["n"] == 1:
            return out[0] * float("nan"), out[1], out[2]
        return out

    m.forward = poisoned
    hist = train_learner(m, x, Recipe(epochs=1, batch_size=32))
    assert hist.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in m.parameters())
