"""Phase 7: an edge fine-tunes the compact model of its task on its own data.

The personalisation recipe of the run's preset (MSE + β·KL with the gate's auxiliary
losses, no connection pruning; by default gently, since the model is already trained).
Afterwards the task's latent prior is refitted to the posterior codes of the local data,
since generation should follow what this edge's users look like.
"""

from __future__ import annotations

import numpy as np

from ..config import Recipe
from ..models import BAIM, fit_priors, train_baim


def personalize(compact: BAIM, images: np.ndarray, recipe: Recipe, test: np.ndarray | None = None) -> list[dict]:
    tasks = np.zeros(len(images), dtype=np.int64)
    log = train_baim(
        compact,
        images,
        tasks,
        recipe,
        test_sets={0: test} if test is not None else None,
        label="personalise",
        pretrained=set(range(len(compact.learners))),  # everything it holds was trained in the cloud
    )
    fit_priors(compact, images, tasks, seed=recipe.seed)
    return log
