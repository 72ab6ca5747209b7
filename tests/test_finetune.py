"""The default finetune must not wreck what it starts from; the paper's plain recipe can."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from baim.cloud import fuse
from baim.config import Recipe
from baim.edge import train_learner
from baim.learners import StagedVAE, tier_spec
from baim.models import reconstruction_metrics, train_baim
from baim.presets import get_preset, with_cloud_recipe


@pytest.fixture(scope="module")
def trousers_upload(fmnist):
    """A converged-ish one-learner squad: a small learner trained on trousers and bags."""
    labels = np.asarray(fmnist.train.labels)
    idx = np.flatnonzero(np.isin(labels, [1, 8]))
    torch.manual_seed(0)
    learner = StagedVAE(tier_spec("small"))
    train_learner(learner, fmnist.train.load(idx[:1500]), Recipe(epochs=6, seed=0))
    cloud = fmnist.train.load(idx[1500:2000])
    test_idx = np.flatnonzero(np.isin(np.asarray(fmnist.test.labels), [1, 8]))[:300]
    return learner, cloud, fmnist.test.load(test_idx)


def _finetune_curve(upload, recipe_name: str, epochs: int = 4) -> tuple[float, list[float]]:
    """Test loss of the fused one-learner squad before training and after every epoch (8 steps each)."""
    learner, cloud, test = upload
    preset = with_cloud_recipe(get_preset("quick"), recipe_name)
    model = fuse([learner], [0], ["trousers_bags"], "finetune", top_k=2, height=0, seed=0, screening_losses=[0.0])
    before = reconstruction_metrics(model, test)["test_loss"]
    cfg = replace(preset.cloud, epochs=epochs, batch_size=64).with_seed(0)
    log = train_baim(model, cloud, np.zeros(len(cloud), dtype=np.int64), cfg, test_sets={0: test}, pretrained={0})
    return before, [row["test_loss"]["trousers_bags"] for row in log]


@pytest.mark.integration
def test_default_finetune_does_not_make_a_one_learner_squad_worse(trousers_upload):
    before, curve = _finetune_curve(trousers_upload, "gentle")
    assert max(curve) <= before * 1.01, (before, curve)


@pytest.mark.integration
def test_paper_recipe_is_what_the_default_protects_against(trousers_upload):
    """The same check fails for the paper's plain recipe (lr 0.005 on trained weights, fresh
    Adam moments, BatchNorm statistics overwritten by small batches): the test above can fail."""
    before, curve = _finetune_curve(trousers_upload, "paper")
    assert max(curve) > before * 1.05, (before, curve)
