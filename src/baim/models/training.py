"""Training the BAIM on the cloud's common data (phase 4), and a compact model at the edge
(phase 7), through the one training loop (:func:`baim.models.fit`).

Every epoch mixes all tasks; each sample is routed to its task's squad. The objective is the
learners' (MSE + β·KL, with the KL of the product-of-experts posterior) plus a Switch-style
load-balance loss and a small router z-loss per task, plus TSGate's task-classification loss
(its own parameters only). Connections are pruned every ``prune_interval`` epochs. The
optimiser and learning-rate schedule are the edges' (Adam 0.005, ×0.95 per epoch) for all
three strategies, so their curves compare.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import Recipe
from ..data import to_float
from .baim import BAIM
from .connections import LowRankProjection, Projection
from .evaluation import reconstruction_metrics
from .fit import Epoch, Loss, fit
from .gates import load_balance_loss, router_z_loss
from .step_cost import uncounted

# Weights of the auxiliary losses: small enough not to fight the reconstruction objective.
BALANCE_WEIGHT, Z_LOSS_WEIGHT, TASK_WEIGHT = 0.01, 0.001, 1.0


def _param_groups(model: BAIM, only: set[str] | None, pretrained: set[int], scale: float) -> list[dict]:
    """Two groups: parameters that start from trained weights or from an exact identity (the
    ``pretrained`` learners, their latent adapters and, when there are any, the LSGates that
    choose among them) at ``scale`` × the rate, and the new parts (connections, TSGate) at the
    full rate. Measured on a quick run's uploads: adapters at the full rate make a one-learner
    squad worse than its upload after 8 steps (0.0388 vs 0.0359 test loss); at the lower rate
    it improves (0.0351)."""
    slow = tuple(f"learners.{l}." for l in sorted(pretrained)) + tuple(f"adapters.{l}." for l in sorted(pretrained))
    slow += ("lsgates.",) if pretrained else ()
    groups: dict[str, list] = {"trained": [], "new": []}
    for n, p in model.named_parameters():
        if p.requires_grad and (only is None or n in only):
            groups["trained" if n.startswith(slow) else "new"].append(p)
    return [{"params": ps, "scale": scale if k == "trained" else 1.0, "name": k} for k, ps in groups.items() if ps]


def _optimizer(lr: float, groups: list[dict], old: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
    opt = torch.optim.Adam([dict(g) for g in groups], lr=lr, foreach=True)  # one fused update, not one per tensor
    if old is not None:  # keep Adam's moments for parameters that survived pruning
        for g in opt.param_groups:
            for p in g["params"]:
                if p in old.state:
                    opt.state[p] = old.state[p]
    return opt


class _Objective:
    """The BAIM's objective for one batch of (images, tasks); counts, per task, how often the
    LSGate picked each squad position in the steps that were taken."""

    def __init__(self, model: BAIM, kld_weight: float, after_step: Callable[[int], None] | None = None):
        self.kld_weight = kld_weight
        self.usage = self.fresh_usage(model)
        self.after_step = after_step  # called with the step's number (1-based) once it was taken

    @staticmethod
    def fresh_usage(model: BAIM) -> dict[int, torch.Tensor]:
        return {t: torch.zeros(len(model.squad(t))) for t in range(len(model.task_names))}

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, ...], step: int) -> Loss:
        assert isinstance(model, BAIM)
        x, t = batch
        out = model(x, t)
        mse = F.mse_loss(out.x_hat, x)
        kld = out.kl().mean()
        balance = sum((load_balance_loss(r) for _, r in out.routings.values()), x.new_zeros(()))
        zl = sum((router_z_loss(r) for _, r in out.routings.values()), x.new_zeros(()))
        task_ce = F.cross_entropy(model.tsgate(x), t) if model.tsgate is not None else x.new_zeros(())
        loss = mse + self.kld_weight * kld + BALANCE_WEIGHT * balance + Z_LOSS_WEIGHT * zl

        def taken() -> None:
            if self.after_step is not None:
                self.after_step(step + 1)
            for task, (_, r) in out.routings.items():
                self.usage[task] += torch.bincount(r.indices.flatten(), minlength=len(self.usage[task])).float()

        terms = {"loss": loss, "mse": mse, "kld": kld, "balance": balance, "task_ce": task_ce}
        return Loss(loss + TASK_WEIGHT * task_ce, terms, taken)


def _choose(model: BAIM, ratio: float, retiring: set[str], step: int) -> dict[str, tuple[float, int]]:
    """The next ``floor(ratio × surviving)`` connections to anneal: smallest |α|·‖P‖ first."""
    scored = sorted((_projection(model, n).score(), n) for n in model.connections if n not in retiring)
    return {n: (_projection(model, n).alpha.item(), step) for _, n in scored[: math.floor(ratio * len(scored))]}


def _projection(model: BAIM, name: str) -> Projection | LowRankProjection:
    return cast(Projection | LowRankProjection, model.connections[name])


@torch.no_grad()
def _anneal(model: BAIM, retiring: dict[str, tuple[float, int]], step: int, span: int) -> None:
    """α of each retiring connection: linearly from its value when chosen to exactly 0 after ``span`` steps."""
    for name, (alpha0, chosen) in retiring.items():
        left = max(0.0, 1.0 - (step - chosen) / span)
        _projection(model, name).alpha.fill_(alpha0 * left)


def train_baim(
    model: BAIM,
    images: np.ndarray,
    tasks: np.ndarray,
    recipe: Recipe,
    test_sets: dict[int, np.ndarray] | None = None,
    label: str = "cloud",
    only: set[str] | None = None,
    prune_interval: int = 0,
    prune_ratio: float = 0.0,
    pretrained: set[int] | None = None,
    prune_anneal: bool = False,
    val: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[dict]:
    """Train in place; returns one log row per epoch (losses, test loss per task, usage,
    surviving connections, parameter count). ``only``: the names of the parameters that
    train (default: every one that requires grad). Every ``prune_interval`` epochs the
    fraction ``prune_ratio`` of surviving connections is deleted (0 for either: never).
    ``pretrained``: the learners that start from trained weights, which get ``recipe``'s
    gentler treatment (lower rate, kept normalisation statistics). With ``prune_anneal`` a
    connection chosen for pruning is not cut at once: its α falls linearly to 0 over the next
    ``prune_interval`` epochs' steps (the others adapt meanwhile), and it is removed when it is
    exactly 0, which changes nothing; connections chosen too late to reach 0 before the last
    epoch stay.

    ``val``: held-out common images and their tasks, scored (the objective without its noise:
    the test loss, averaged over images) after every epoch; with ``recipe.patience`` > 0 the
    cloud trains to convergence on them (``recipe.epochs`` a cap, the best epoch's weights
    kept), as every method does in a study at convergence. The best epoch's connections come
    back with its weights: a pruning that made validation worse is undone."""
    pretrained = set(pretrained or ())
    steps = math.ceil(len(images) / recipe.batch_size)
    retiring: dict[str, tuple[float, int]] = {}  # annealed connection -> (its α when chosen, step chosen)
    clock = {"step": 0}

    def after_step(step: int) -> None:
        clock["step"] = step
        if retiring:
            _anneal(model, retiring, step, prune_interval * steps)

    objective = _Objective(model, recipe.kld_weight, after_step if prune_anneal else None)
    opt = _optimizer(recipe.lr, _param_groups(model, only, pretrained, recipe.trained_lr_scale))

    def end_epoch(ep: Epoch) -> dict:
        pruned: list[str] = []
        if prune_ratio > 0 and prune_interval > 0 and ep.number % prune_interval == 0:
            if prune_anneal:
                pruned = [n for n in retiring if _projection(model, n).alpha.item() == 0.0]
                for name in pruned:
                    model.remove_connection(name)
                    del retiring[name]
                if recipe.epochs - ep.number >= prune_interval:  # time left to anneal the next ones to 0
                    retiring.update(_choose(model, prune_ratio, set(retiring), clock["step"]))
            else:
                pruned = model.prune_connections(prune_ratio)
            groups = _param_groups(model, only, pretrained, recipe.trained_lr_scale)
            ep.optimizer = _optimizer(ep.lr, groups, old=ep.optimizer)
        usage, objective.usage = objective.usage, objective.fresh_usage(model)
        row = {
            "epoch": ep.number,
            "lr": ep.lr,
            "seconds": round(ep.seconds, 3),
            **ep.train,
            "skipped_steps": ep.skipped,
            "connections": len(model.connections),
            "pruned": len(pruned),
            **({"annealing": len(retiring)} if prune_anneal else {}),
            "parameters": model.num_parameters(),
            "usage": {model.task_names[t]: (u / u.sum().clamp_min(1)).tolist() for t, u in usage.items()},
        }
        if test_sets:
            with uncounted():  # a report's curve, not the training's work
                ev = {
                    model.task_names[t]: reconstruction_metrics(model, x, t, recipe.kld_weight)["test_loss"]
                    for t, x in test_sets.items()
                }
            row["test_loss"] = ev
            row["test_loss_mean"] = float(np.mean(list(ev.values())))
        return row

    data = (to_float(images), torch.from_numpy(np.asarray(tasks, dtype=np.int64)))
    keep_eval = [model.learner(l) for l in sorted(pretrained)] if recipe.keep_norm_stats else []
    validate = None
    if val is not None and len(val[0]):
        val_x, val_t = val[0], np.asarray(val[1], dtype=np.int64)

        def validate(m: torch.nn.Module) -> float:
            assert isinstance(m, BAIM)
            total = 0.0
            for t in sorted(set(val_t.tolist())):
                x = val_x[val_t == t]
                total += len(x) * reconstruction_metrics(m, x, t, recipe.kld_weight)["test_loss"]
            return total / len(val_x)

    return fit(
        model,
        data,
        recipe,
        objective,
        optimizer=opt,
        keep_eval=keep_eval,
        end_epoch=end_epoch,
        validate=validate,
        label=label,
    ).epochs
