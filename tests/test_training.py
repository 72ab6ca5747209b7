"""Short real-data training: the loss must fall and samples must beat pure noise in FID."""

import numpy as np
import pytest
import torch

from baim.data.layout import make_layout
from baim.edge import TrainConfig, build_learner, fid_of_model, train_learner
from baim.learners import StagedVAE, tier_spec
from baim.metrics import evaluate_reconstruction, fid
from baim.presets import get_preset


@pytest.mark.integration
def test_real_training_loss_falls_and_fid_beats_noise(fmnist):
    layout = make_layout(fmnist, get_preset("quick"), seed=0)
    e = layout.edges[1]  # a footwear edge
    model = build_learner("small", fmnist, seed=0)
    test = fmnist.test.load(layout.test[layout.task_names[e.task]])
    before = evaluate_reconstruction(model, test)["test_loss"]
    hist = train_learner(model, fmnist.train.load(e.indices), TrainConfig(epochs=4), eval_images=test)
    losses = [r["test_loss"] for r in hist.epochs]
    assert losses[-1] < before * 0.5, (before, losses)
    assert hist.skipped_steps == 0 and hist.images_per_second > 0
    f = fid_of_model(model, fmnist, layout, e.task, 300, "domain", seed=0)
    real = fmnist.test.load(layout.test[layout.task_names[e.task]][:300])
    noise = np.random.default_rng(0).integers(0, 256, size=real.shape, dtype=np.uint8)
    noise_fid = fid(real, noise, fmnist.test.load(layout.test[layout.task_names[e.task]][300:600])).fid
    assert f["fid_samples"] < 0.8 * noise_fid, (f["fid_samples"], noise_fid)
    assert f["fid_real_vs_real"] < f["fid_samples"]


def test_training_is_deterministic_for_a_seed():
    x = (np.random.default_rng(0).random((96, 1, 32, 32)) * 255).astype(np.uint8)

    def once() -> StagedVAE:
        torch.manual_seed(5)
        m = StagedVAE(tier_spec("small"))
        train_learner(m, x, TrainConfig(epochs=2, batch_size=32, seed=5))
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
    hist = train_learner(m, x, TrainConfig(epochs=1, batch_size=32))
    assert hist.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in m.parameters())
