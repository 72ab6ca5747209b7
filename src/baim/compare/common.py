"""What every method of ``baim compare`` shares: the run's layout and data, one training loop
for staged VAEs, and the workflow's like-for-like evaluation at the edges."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..config import Preset, Recipe, RunConfig
from ..data import DataSet, to_float
from ..data.layout import Layout
from ..errors import WorkflowError
from ..learners import TIERS, StagedVAE, tier_spec, vae_loss, weights_digest
from ..models import Loss, evaluate, fit, nll_bpd, reconstruction_metrics
from ..models.evaluation import NLL_COUNT, own_test_metrics
from .measure import Wire

FID_SAMPLING = "fitted"  # z from a Gaussian fitted to the model's posterior codes of its own training data
QUALITY_KEYS = (
    "nll_bpd",
    "test_loss",
    "mse",
    "psnr",
    "fid_fitted",
    "kid_fitted",
    "fid_standard",
    "fid_reconstruction",
    "fid_real_vs_real",
)
# the same on the edge's own test set (its class mix), where the layout has one
OWN_KEYS = ("own_nll_bpd", "own_test_loss", "own_mse")


def quality_of(metrics: dict) -> dict:
    """A row's quality numbers from an evaluation: every ``QUALITY_KEYS``, and the ``OWN_KEYS``
    where the layout gave the edge its own test set."""
    return {k: metrics[k] for k in QUALITY_KEYS} | {k: metrics[k] for k in OWN_KEYS if k in metrics}


@dataclass
class Settings:
    """Rounds and epochs of the round-based methods (stored in compare.json). With
    ``patience`` > 0 every count is a cap: each method stops on its own validation data once
    ``patience`` epochs (rounds) in a row did not improve it, and keeps its best weights."""

    rounds: int  # FedAvg and FD rounds
    local_epochs: int  # local epochs per round
    sl_epochs: int
    central_epochs: int
    distill_weight: float = 1.0  # FD: weight of the distillation term (beside the plain loss)
    patience: int = 0  # 0: fixed budgets
    kd_weight: float = 0.5  # KD: the teacher term's share of a student's loss (the data's: 1 - it)
    curve_every: int = 1  # round-based methods score their curve every this many rounds (and the last)

    def with_weights(self, weights: dict[str, float]) -> Settings:
        """A copy with tuned loss weights (``distill_weight``, ``kd_weight``) set."""
        out = replace(self)
        for name, value in weights.items():
            if name not in LOSS_WEIGHTS:
                raise WorkflowError(f"{name!r} is not a loss weight of the comparison's settings")
            setattr(out, name, float(value))
        return out


LOSS_WEIGHTS = ("distill_weight", "kd_weight")  # the settings a tuning may choose


@dataclass
class Context:
    cfg: RunConfig
    layout: Layout
    ds: DataSet
    preset: Preset
    settings: Settings
    keep_messages: bool = False
    cache: dict[str, Any] = field(default_factory=dict)
    # a tuning run (``baim tune --kd-weights``): models are scored on the edges' validation
    # parts only, and no test image is read
    validation_only: bool = False

    @property
    def seed(self) -> int:
        return self.cfg.seed

    @property
    def edges(self) -> list[int]:
        return [e.edge for e in self.layout.edges]

    def task_of(self, edge: int) -> int:
        return self.layout.edges[edge].task

    def tier_of(self, edge: int) -> str:
        return self.layout.edges[edge].tier

    def edges_of(self, task: int) -> list[int]:
        return [e.edge for e in self.layout.edges if e.task == task]

    def local_images(self, edge: int) -> np.ndarray:
        return self.ds.train.load(self.layout.edges[edge].indices)

    def val_images(self, edge: int) -> np.ndarray:
        """The edge's held-out validation part (empty for a layout made without one)."""
        return self.ds.train.load(self.layout.edges[edge].val)

    def common_val(self) -> tuple[np.ndarray, np.ndarray]:
        """The cloud's validation part of its common data and their tasks."""
        return self._with_tasks(self.layout.cloud_val)

    def converging(self, recipe: Recipe, epochs: int) -> Recipe:
        """``recipe`` for ``epochs`` epochs, early-stopped on validation when the settings ask."""
        return replace(recipe, epochs=epochs, patience=self.settings.patience)

    def common(self) -> tuple[np.ndarray, np.ndarray]:
        """The cloud's common images and their tasks (as the workflow's cloud sees them)."""
        return self._with_tasks(self.layout.cloud)

    def _with_tasks(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        images = self.ds.train.load(indices)
        cls_task = {c: t for t, task in enumerate(self.layout.tasks) for c in task["classes"]}
        tasks = np.array([cls_task[int(c)] for c in np.asarray(self.ds.train.labels)[indices]], dtype=int)
        return images, tasks

    def wire(self) -> Wire:
        return Wire(keep=self.keep_messages)

    def recipe(self, seed_offset: int = 0, tier: str | None = None) -> Recipe:
        """The edges' recipe for a fixed number of epochs (see :meth:`converging`), at ``tier``'s
        tuned rate where the preset has one (``Preset.tier_lr``)."""
        return replace(self.preset.edge_recipe(tier).with_seed(self.seed + seed_offset), patience=0)

    # -- evaluation -----------------------------------------------------------------------
    def evaluate_edge(self, edge: int, model: StagedVAE, prior_images: np.ndarray | None = None) -> dict:
        """The workflow's evaluation of one edge's model (``EdgeNode.on_evaluate``): the edge's
        task test set, the layout's FID sets, the run's extractor, count and seed; the fitted
        prior from ``prior_images`` (default: the edge's own images). Every number is seeded,
        so the same weights on the same edge score the same: with the default prior a result
        is kept per context and weights' digest (the broadcasts send many edges the same model)."""
        if prior_images is not None:
            return self._evaluate_edge(edge, model, prior_images)
        seen = self.cache.setdefault("evaluate_edge", {})
        key = (edge, self.validation_only, weights_digest(model))
        if key not in seen:
            seen[key] = self._evaluate_edge(edge, model, None)
        return dict(seen[key])

    def _evaluate_edge(self, edge: int, model: StagedVAE, prior_images: np.ndarray | None) -> dict:
        name = self.layout.task_names[self.task_of(edge)]
        val = {"val_loss": self.val_loss(edge, model)}
        if self.validation_only:
            return {"edge": edge, "task": name, **val}
        real, baseline = self.layout.fid_sets(self.ds, name, self.preset.fid_count)
        ev = evaluate(
            model,
            self.ds.test.load(self.layout.test[name]),
            real,
            baseline,
            self.cfg.fid_extractor,
            kld_weight=self.preset.edge.kld_weight,
            seed=self.seed,
            prior_images=self.local_images(edge) if prior_images is None else prior_images,
            own_test=self.own_test(edge),
        )
        return {"edge": edge, "task": name, **quality_of(ev.metrics), **val}

    def val_loss(self, edge: int, model: StagedVAE) -> float:
        """The plain VAE loss of ``model`` on edge ``edge``'s validation part (NaN without one):
        what a choice between settings is made on."""
        val = self.val_images(edge)
        if not len(val):
            return float("nan")
        return reconstruction_metrics(model, val, kld_weight=self.preset.edge.kld_weight, seed=self.seed)["test_loss"]

    def own_test(self, edge: int) -> np.ndarray | None:
        """The edge's own test set (its class mix); None for a layout made without one."""
        ids = self.layout.edges[edge].test
        return self.ds.test.load(ids) if ids else None

    def own_quality(self, edge: int, model: StagedVAE) -> dict[str, float]:
        """The ``OWN_KEYS`` of ``model`` on edge ``edge``'s own test set (none without one): for a
        model scored once per task and listed for each of its edges."""
        own = self.own_test(edge)
        beta, seed = self.preset.edge.kld_weight, self.seed
        return {} if own is None else own_test_metrics(model, own, kld_weight=beta, seed=seed)

    def cheap_quality(
        self, edge: int, model: StagedVAE, shared: dict | None = None, val_loss: float | None = None
    ) -> dict[str, float]:
        """Per-round numbers of a round-based method: the test loss and the likelihood bound on
        the edge's task test set, and the loss on the edge's validation part (what stops it).
        ``shared``: a dict kept over one round's edges, so that a model several edges hold (a
        task's global model) is scored on the task's test set once, not once per edge (the same
        numbers: the scoring is seeded). ``val_loss``: the edge's validation loss where the
        caller's early stopping already scored this model (the same number, not computed twice)."""
        name = self.layout.task_names[self.task_of(edge)]
        beta, seed = self.preset.edge.kld_weight, self.seed
        val = {"val_loss": self.val_loss(edge, model) if val_loss is None else val_loss}
        if self.validation_only:
            return val
        key = (id(model), name)
        task_level = shared.get(key) if shared is not None else None
        if task_level is None:
            test = self.ds.test.load(self.layout.test[name])
            task_level = {
                "test_loss": reconstruction_metrics(model, test, kld_weight=beta, seed=seed)["test_loss"],
                "nll_bpd": nll_bpd(model, test[:NLL_COUNT], kld_weight=beta, seed=seed),
            }
            if shared is not None:
                shared[key] = task_level
        return {**task_level, **val}


def largest_tier(tiers: Sequence[str]) -> str:
    return max(tiers, key=lambda t: tier_spec(t).state_elements())


def smallest_tier(tiers: Sequence[str]) -> str:
    return min(tiers, key=lambda t: tier_spec(t).state_elements())


def build(tier: str, ds: DataSet, seed: int) -> StagedVAE:
    if tier not in TIERS:
        raise WorkflowError(f"unknown tier {tier!r}")
    torch.manual_seed(seed)
    return StagedVAE(tier_spec(tier, ds.image_size, ds.channels))


def quality(rows: list[dict]) -> dict[str, float]:
    """Mean over edges of every quality number the rows have (a validation-only run's rows
    have only ``val_loss``)."""
    return {k: float(np.mean([r[k] for r in rows])) for k in (*QUALITY_KEYS, "val_loss") if rows and k in rows[0]}


Extra = Callable[[StagedVAE, torch.Tensor], torch.Tensor]


def train_vae(
    model: StagedVAE,
    images: np.ndarray,
    recipe: Recipe,
    epochs: int,
    first_epoch: int = 0,
    extra: Extra | None = None,
    opt: torch.optim.Optimizer | None = None,
    recon_weight: float = 1.0,
    target: Callable[[torch.Tensor], torch.Tensor] | None = None,
    val: np.ndarray | None = None,
) -> torch.optim.Optimizer:
    """The edges' recipe through the one training loop (:func:`baim.models.fit`: Adam, lr ×
    decay per epoch, MSE + β·KL, clipping, non-finite steps skipped and a diverged epoch
    reported) for ``epochs`` epochs counted from ``first_epoch`` (the schedule's position).
    ``extra(model, x)`` adds a term to each step's loss (distillation); ``target(x)`` is a
    second reconstruction target mixed in as ``(1 - recon_weight)`` (a teacher's output). It
    must be a deterministic function of the images (a teacher in eval mode, z = μ): it is
    computed once for all images before training, not again at every step of every epoch
    (the teacher's forward passes were most of a distillation's cost).
    ``val``: held-out images, the plain VAE test loss on them scored after every epoch (early
    stopping when ``recipe.patience`` > 0; the best epoch's weights kept). Returns the
    optimizer, for a method that keeps its state across rounds."""

    x_all = to_float(images)
    data: tuple[torch.Tensor, ...] = (x_all,)
    if target is not None and len(x_all):
        with torch.no_grad():
            data = (x_all, torch.cat([target(x_all[i : i + 500]) for i in range(0, len(x_all), 500)]))

    def objective(m: torch.nn.Module, batch: tuple[torch.Tensor, ...], step: int) -> Loss:
        assert isinstance(m, StagedVAE)
        x = batch[0]
        x_hat, mu, logvar = m(x)
        loss, _, _ = vae_loss(x_hat, x, mu, logvar, recipe.kld_weight)
        if target is not None:
            loss = recon_weight * loss + (1 - recon_weight) * torch.nn.functional.mse_loss(x_hat, batch[1])
        if extra is not None:
            loss = loss + extra(m, x)
        return Loss(loss, {"loss": loss})

    def validate(m: torch.nn.Module) -> float:
        assert isinstance(m, StagedVAE) and val is not None
        return reconstruction_metrics(m, val, kld_weight=recipe.kld_weight, seed=recipe.seed)["test_loss"]

    return fit(
        model,
        data,
        replace(recipe, epochs=epochs),
        objective,
        optimizer=opt,
        validate=validate if val is not None and len(val) else None,
        generator=torch.Generator().manual_seed(recipe.seed + 7919 * first_epoch),
        first_epoch=first_epoch,
        label=f"baseline ({model.spec.tier})",
        fixed_cost=True,  # a learner, no routing: one step per batch shape through the FLOP counter
    ).optimizer
