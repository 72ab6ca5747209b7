"""Local training of a learner on an edge's private slice (phase 1 of the workflow).

The paper's recipe: Adam (lr 0.005), learning rate × 0.95 after every epoch, objective
MSE + 0.00025·KL, through the one training loop (:func:`baim.models.fit`): log σ² is clamped
in the model, gradients are clipped, and a step whose loss is not finite is skipped and counted
rather than allowed to poison the weights. Deterministic for a seed on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import Recipe
from ..data import to_float
from ..learners import StagedVAE
from ..models import Epoch, fit, reconstruction_metrics, vae_objective
from ..models.step_cost import uncounted


@dataclass
class TrainHistory:
    epochs: list[dict] = field(default_factory=list)
    skipped_steps: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0


def train_learner(
    model: StagedVAE,
    images: np.ndarray,
    recipe: Recipe,
    label: str = "train",
    eval_images: np.ndarray | None = None,
    val_images: np.ndarray | None = None,
) -> TrainHistory:
    """Train ``model`` in place on uint8 ``images``; returns per-epoch losses (and the test
    loss on ``eval_images`` after each epoch, where given). ``val_images``: the edge's held-out
    validation part, scored after every epoch (early stopping when ``recipe.patience`` > 0)."""

    def validate(m: object) -> float:
        assert isinstance(m, StagedVAE) and val_images is not None
        return reconstruction_metrics(m, val_images, kld_weight=recipe.kld_weight, seed=recipe.seed)["test_loss"]

    def row(ep: Epoch) -> dict:
        out = {"epoch": ep.number, **ep.train, "lr": ep.lr}
        if eval_images is not None:
            with uncounted():  # a report's curve, not the edge's work
                out["test_loss"] = reconstruction_metrics(model, eval_images, kld_weight=recipe.kld_weight)["test_loss"]
        return out

    done = fit(
        model,
        (to_float(images),),
        recipe,
        vae_objective(recipe.kld_weight),
        end_epoch=row,
        validate=validate if val_images is not None and len(val_images) else None,
        label=label,
        fixed_cost=True,
    )
    return TrainHistory(
        done.epochs,
        done.skipped_steps,
        done.seconds,
        len(done.epochs) * len(images) / max(done.seconds, 1e-9),
    )
