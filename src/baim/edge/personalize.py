"""Phase 7: an edge fine-tunes the compact model of its task on its own data.

Same recipe as everywhere else (Adam 0.005, ×0.95 per epoch, MSE + β·KL with the gate's
auxiliary losses); afterwards the task's latent prior is refitted to the posterior codes of
the local data, since generation should follow what this edge's users look like.
"""

from __future__ import annotations

import numpy as np

from ..cloud.model import BAIM
from ..cloud.train import CloudConfig, fit_priors, train_baim
from ..presets import Preset


def personalize(compact: BAIM, images: np.ndarray, preset: Preset, seed: int = 0,
                test: np.ndarray | None = None) -> list[dict]:
    tasks = np.zeros(len(images), dtype=np.int64)
    cfg = CloudConfig(epochs=preset.personalize_epochs, batch_size=preset.batch_size, lr=preset.lr,
                      lr_decay=preset.lr_decay, kld_weight=preset.kld_weight, prune_ratio=0.0, seed=seed)
    log = train_baim(compact, images, tasks, cfg, test_sets={0: test} if test is not None else None,
                     label="personalise")
    fit_priors(compact, images, tasks, seed=seed)
    return log
