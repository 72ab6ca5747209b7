"""One training loop for every model baim trains: an edge's learner, the BAIM in the cloud, a
compact model at personalisation, and every baseline of the comparison.

Why one: the recipe's numeric guards were three loops that drifted apart. Here the schedule
(exponential decay per epoch, linear warm-up over the first steps, a per-group ``scale`` for
parameters that start from trained weights), gradient clipping, the divergence guard (a step
whose objective is not finite is skipped and counted; an epoch with nothing kept, or whose
logged losses are not finite, raises :class:`baim.errors.TrainingDiverged`) and the progress
bar live in one place. What differs between models is the objective and what an epoch's log
row holds; the caller passes both.

Early stopping: with ``recipe.patience`` > 0, ``recipe.epochs`` is a cap, not a budget: after
every epoch ``validate(model)`` scores held-out data; training stops once ``patience`` epochs
in a row did not improve on the best score, and the best epoch's weights are restored. That is
how every method trains "to convergence" on its own validation data, so a comparison at
convergence does not reward whichever method happened to get more steps.

Deterministic for a seed on CPU: the order of random draws is shuffling (``generator``) once
per epoch, then the objective's own draws step by step.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Recipe
from ..errors import ConfigError, TrainingDiverged
from ..learners import vae_loss
from ..progress import make_progress
from . import memory_format
from .step_cost import StepCosts


@dataclass
class Loss:
    """One step's objective. ``total`` is minimised; each of ``terms`` (a scalar) is logged as
    ``train_<name>``, averaged over the samples of the epoch's kept steps; ``taken`` runs once
    the step has been applied (a skipped step must not count, e.g. in gate usage)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    taken: Callable[[], None] | None = None


# objective(model, batch, step): ``batch`` holds the rows of each tensor of ``data``; ``step``
# counts batches from the schedule's start (warm-up's clock).
Objective = Callable[[nn.Module, tuple[torch.Tensor, ...], int], Loss]


@dataclass
class Epoch:
    """What :func:`fit` hands ``end_epoch`` after each epoch."""

    number: int  # 1-based, counted from the schedule's start
    lr: float  # the epoch's decayed rate, warm-up and group scales aside
    train: dict[str, float]  # train_<term>: sample-weighted means over the kept steps
    seen: int  # samples of the kept steps
    skipped: int  # steps skipped because their objective was not finite
    seconds: float
    optimizer: torch.optim.Optimizer  # end_epoch may replace it when the parameters changed

    def row(self) -> dict:
        return {"epoch": self.number, "lr": self.lr, **self.train}


@dataclass
class Fitted:
    """One row per epoch (``end_epoch``'s, or :meth:`Epoch.row`), steps skipped in all, wall
    seconds, and the optimizer as it ended (a caller that trains on in rounds passes it back).
    With early stopping, ``best_epoch`` is the epoch whose weights the model holds (its
    ``val_loss`` in its row); otherwise it is the last one."""

    epochs: list[dict]
    skipped_steps: int
    seconds: float
    optimizer: torch.optim.Optimizer
    best_epoch: int = 0

    @property
    def stopped_early(self) -> bool:
        return bool(self.epochs) and self.best_epoch < self.epochs[-1]["epoch"]


Validate = Callable[[nn.Module], float]


@dataclass
class Stopping:
    """How one early-stopped training went: validations seen, and whether its patience ran out
    (a training that ends without that ran to its cap: not known to be converged)."""

    updates: int = 0
    stopped: bool = False


_watching: list[list[Stopping]] = []


@contextmanager
def stopping_record() -> Iterator[list[Stopping]]:
    """How every :class:`EarlyStopping` made for the duration ended (fits with patience, and
    the rounds of a federated method): only these small records, not the stoppers (whose best
    weights would otherwise stay in memory for as long as the record)."""
    seen: list[Stopping] = []
    _watching.append(seen)
    try:
        yield seen
    finally:
        del _watching[next(i for i, x in enumerate(_watching) if x is seen)]


def stopping_counts(record: Iterable[Stopping]) -> dict[str, int]:
    """How many trainings stopped by their patience, and how many ran to their cap."""
    ran = [s for s in record if s.updates]
    return {"by_patience": sum(s.stopped for s in ran), "at_cap": sum(not s.stopped for s in ran)}


class EarlyStopping:
    """Tracks the best validation score and the model that reached it; says when ``patience``
    epochs in a row brought no improvement.

    A model whose structure training changes (a BAIM whose connections are pruned) says what
    its structure is (``structure()``) and can be given one back (``restore_structure(s)``):
    the best epoch's structure is kept with its weights and restored with them, so a pruning
    that made validation worse is undone with the rest."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_structure: object = None
        self.bad = 0
        self.outcome = Stopping()
        for seen in _watching:
            seen.append(self.outcome)

    def update(self, model: nn.Module, epoch: int, score: float) -> bool:
        """Record ``score`` for ``epoch``; True when training should stop."""
        self.outcome.updates += 1
        if math.isfinite(score) and score < self.best:
            self.best, self.best_epoch, self.bad = score, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
            structure = getattr(model, "structure", None)
            self.best_structure = structure() if callable(structure) else None
        else:
            self.bad += 1
        self.outcome.stopped = self.bad >= self.patience
        return self.outcome.stopped

    def restore(self, model: nn.Module) -> None:
        if self.best_state is None:
            return
        if self.best_structure is not None:
            model.restore_structure(self.best_structure)  # type: ignore[operator]
        model.load_state_dict(self.best_state)


def fit(
    model: nn.Module,
    data: Sequence[torch.Tensor],
    recipe: Recipe,
    objective: Objective,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    first_epoch: int = 0,
    keep_eval: Iterable[nn.Module] = (),
    end_epoch: Callable[[Epoch], dict] | None = None,
    validate: Validate | None = None,
    label: str = "train",
    fixed_cost: bool = False,
) -> Fitted:
    """Train ``model`` in place for ``recipe.epochs`` epochs on ``data`` (tensors with one row
    per sample, batched together) and leave it in eval mode.

    ``optimizer``: default Adam over all parameters at ``recipe.lr``; a param group's optional
    ``scale`` multiplies its rate. ``generator`` shuffles; by default one seeded with
    ``recipe.seed``, and then the global generator (posterior noise) is seeded too, so a fit
    repeats on its own. ``first_epoch``: the schedule's position (rounds of a federated
    method). ``keep_eval``: modules that stay in eval mode while the rest trains (BatchNorm
    statistics of trained weights). ``end_epoch`` makes the epoch's log row (evaluation,
    pruning); the divergence guard checks it. ``validate(model)``: a held-out score (lower is
    better) logged as ``val_loss`` after every epoch; required when ``recipe.patience`` > 0
    (early stopping, best weights restored). ``fixed_cost``: every step of the same batch shapes
    does the same matrix work (no routing, no pruning, no step-dependent terms), so a running
    FLOP counter counts one step per shape and books it for the others, and the validation of
    the first epoch for the later ones (:mod:`baim.models.step_cost`)."""
    if recipe.patience and validate is None:
        raise ConfigError(
            f"{label}: early stopping (patience {recipe.patience}) needs validation data; pass validate= "
            "or set patience 0 for a fixed number of epochs"
        )
    stopper = EarlyStopping(recipe.patience) if recipe.patience else None
    if generator is None:
        torch.manual_seed(recipe.seed)
        generator = torch.Generator().manual_seed(recipe.seed)
    opt = optimizer if optimizer is not None else torch.optim.Adam(model.parameters(), lr=recipe.lr)
    keep_eval = list(keep_eval)
    n = len(data[0])
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    step = first_epoch * steps_per_epoch
    rows: list[dict] = []
    skipped_total = 0
    costs = StepCosts() if fixed_cost else None
    start = time.perf_counter()
    with memory_format.channels_last(model), make_progress() as progress:
        bar = progress.add_task(label, total=recipe.epochs * steps_per_epoch)
        for epoch in range(first_epoch, first_epoch + recipe.epochs):
            model.train()
            for m in keep_eval:
                m.eval()
            sums: dict[str, float] = {}
            seen = skipped = 0
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=generator)
            for i in range(0, n, recipe.batch_size):
                idx = perm[i : i + recipe.batch_size]
                batch = tuple(t[idx] for t in data)
                lr = recipe.lr_at(epoch, step)
                for g in opt.param_groups:
                    g["lr"] = lr * g.get("scale", 1.0)
                shapes = tuple(tuple(t.shape) for t in batch)
                with _region(costs, ("forward", shapes)):
                    loss = objective(model, batch, step)
                step += 1
                progress.advance(bar)
                opt.zero_grad(set_to_none=True)
                if not torch.isfinite(loss.total):
                    skipped += 1
                    continue
                with _region(costs, ("backward and update", shapes)):
                    loss.total.backward()
                    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], recipe.grad_clip)
                    opt.step()
                if loss.taken is not None:
                    loss.taken()
                k = len(batch[0])
                for name, v in loss.terms.items():
                    sums[name] = sums.get(name, 0.0) + float(v.detach()) * k
                seen += k
            ep = Epoch(
                epoch + 1,
                recipe.lr_at(epoch, recipe.warmup_steps),  # the decayed rate, past warm-up
                {f"train_{name}": v / max(seen, 1) for name, v in sums.items()},
                seen,
                skipped,
                time.perf_counter() - t0,
                opt,
            )
            row = end_epoch(ep) if end_epoch is not None else ep.row()
            opt = ep.optimizer
            if validate is not None:
                with _region(costs, ("validate",)):  # the same held-out images every epoch
                    row["val_loss"] = float(validate(model))
            check_epoch(label, row, seen, skipped)
            rows.append(row)
            skipped_total += skipped
            if "train_loss" in row:
                progress.update(bar, description=f"{label} loss {row['train_loss']:.4f}")
            if stopper is not None and stopper.update(model, epoch + 1, row["val_loss"]):
                break
    best = first_epoch + len(rows)
    if stopper is not None:
        stopper.restore(model)
        best = stopper.best_epoch or best
    model.eval()
    return Fitted(rows, skipped_total, time.perf_counter() - start, opt, best)


def _region(costs: StepCosts | None, key: tuple) -> AbstractContextManager[None]:
    return nullcontext() if costs is None else costs.region(key)


def vae_objective(kld_weight: float) -> Objective:
    """A learner's objective, the paper's: MSE + β·KL (logged: loss, mse, kld)."""

    def objective(model: nn.Module, batch: tuple[torch.Tensor, ...], step: int) -> Loss:
        x = batch[0]
        x_hat, mu, logvar = model(x)
        loss, mse, kld = vae_loss(x_hat, x, mu, logvar, kld_weight)
        return Loss(loss, {"loss": loss, "mse": mse, "kld": kld})

    return objective


def check_epoch(label: str, row: dict, seen: int, skipped: int) -> None:
    """Raise TrainingDiverged if an epoch trained on nothing (every step's loss was NaN or
    infinite, so every step was skipped) or ended with a loss that is not finite. Skipping a
    few bad steps is the numeric guard; a whole epoch of them is divergence, and its numbers
    must not be reported as results."""
    losses = {k: v for k, v in row.items() if k.startswith(("train_", "test_loss"))}
    flat = {
        f"{k} {t}".strip(): float(x)
        for k, v in losses.items()
        for t, x in (v.items() if isinstance(v, dict) else [("", v)])
    }
    bad = sorted(k for k, x in flat.items() if not math.isfinite(x))
    if (seen == 0 and skipped) or bad:
        why = f"{', '.join(bad)} not finite" if bad else f"all {skipped} steps' losses were NaN or infinite"
        raise TrainingDiverged(
            f"{label} diverged in epoch {row.get('epoch')}: {why}. Lower the learning rate or check the "
            "data (and the model it started from); nothing from this training was kept"
        )
