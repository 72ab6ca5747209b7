"""Continual learning: late uploads join a trained BAIM.

A new learner joins its task's squad (or opens a new task), gets its adapter, the gate of
its squad grows by one output, and every candidate connection that involves it is added
(α = 0, so the trained BAIM's outputs for other squads are unchanged). If the newcomer's
latent is larger than the shared one, the shared latent grows; existing adapters and gates
ignore the new coordinates (zero weights), and existing priors treat them as N(0, 1).
By default only the new parts and the gates train afterwards: :func:`add_learners` returns
the names of those parameters for :func:`baim.models.train_baim`'s ``only``.

:func:`integrate` is the whole step the workflow and ``baim cloud add`` take: add, train what
may train on the cloud's common data, refit the touched tasks' priors. By default the tasks no
newcomer belongs to are *untouched*: their learners, gates, priors and the connections into
their learners stay exactly as they were (candidates from a newcomer into an untouched task's
learner are not added), so their outputs are identical afterwards (the forgetting test checks
this to 1e-6). Their learners run in eval mode throughout, so not even BatchNorm statistics move.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..config import Recipe
from ..learners import StagedVAE
from ..models import BAIM, candidate_connections, fit_priors, reconstruction_metrics, train_baim
from .partition import closure


def add_learners(
    model: BAIM, newcomers: list[tuple[StagedVAE, str]], height: int | None = None, into_old: bool = True
) -> set[str]:
    """Add learners (with their task names) to ``model`` in place; return the names of the
    parameters that should train by default (new learners, adapters, connections, gates).
    With ``into_old=False`` no connection ends in a learner that a task no newcomer belongs to
    executes (its squad or a feeder of it), so those tasks compute exactly what they did."""
    height = model.height if height is None else height
    touched = {name for _, name in newcomers}
    # learners whose stages an untouched task executes (its squad and, transitively, its feeders):
    # a connection into one of those would change that task's outputs
    protected: dict[str, set[int]] = {"enc": set(), "dec": set()}
    if not into_old:
        for t, name in enumerate(model.task_names):
            if name not in touched:
                need, _ = closure(model, t)
                for side in protected:
                    protected[side] |= set(need[side])
    before = {n for n, _ in model.named_parameters()}
    first_new = len(model.learners)
    for learner, task_name in newcomers:
        model.add_learner(copy.deepcopy(learner), task_name)
    counts = [
        (len(model.learner(l).encoder_stages), len(model.learner(l).decoder_stages)) for l in range(len(model.learners))
    ]
    for c in candidate_connections(counts, height):
        if (c.src >= first_new or c.dst >= first_new) and c.name not in model.conn_keys:
            if c.dst not in protected[c.side]:
                model.add_connection(c)
    new = {n for n, _ in model.named_parameters()} - before
    gates = {n for n, _ in model.named_parameters() if n.startswith(("lsgates.", "tsgate."))}
    return new | gates


def integrate(
    model: BAIM,
    newcomers: list[tuple[StagedVAE, str]],
    images: np.ndarray,
    task_names: list[str],
    recipe: Recipe,
    *,
    train_old: bool = False,
    test_sets: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Grow ``model`` in place by ``newcomers`` and train it on the cloud's common data
    (``images`` with their task names ``task_names``, which may include the new tasks).

    By default (``train_old=False``) only the new learners, adapters and connections and the
    gates of the touched tasks (and TSGate, when a task is new) train; untouched tasks keep
    their outputs exactly. ``train_old=True`` trains every parameter that is not frozen (the
    old tasks then change; measure it with ``test_sets``). Returns what happened: touched and
    new tasks, parameters before/after and trained, the training log, test loss per task
    before/after where ``test_sets`` (task name → uint8 images) are given, seconds."""
    t0 = time.perf_counter()
    known = set(model.task_names)
    unknown = sorted({n for n in task_names if n not in known} - {n for _, n in newcomers})
    if unknown:
        raise ValueError(f"common data names tasks {unknown} that neither the BAIM nor a newcomer has")
    before_loss = _losses(model, test_sets, recipe.kld_weight)
    touched_names = {n for _, n in newcomers}
    before_out = _means(model, {k: v for k, v in (test_sets or {}).items() if k not in touched_names})
    params_before = model.num_parameters()
    first_new = len(model.learners)
    touched = sorted({n for _, n in newcomers})
    new_tasks = [n for n in touched if n not in known]
    trainable = add_learners(model, newcomers, into_old=train_old)
    t_index = {n: t for t, n in enumerate(model.task_names)}
    touched_ids = {t_index[n] for n in touched}
    old_untouched = [l for l, t in enumerate(model.learner_tasks[:first_new]) if t not in touched_ids]
    if train_old:
        trainable = None  # type: ignore[assignment]
        gate_keep: set[str] = set()
    else:
        # gates of untouched tasks keep their weights (add_learners lists every gate)
        gate_keep = {f"lsgates.{t}." for t in range(len(model.task_names)) if t not in touched_ids}
        gate_keep |= set() if new_tasks else {"tsgate."}
        trainable = {n for n in trainable if not n.startswith(tuple(gate_keep))}
    was_frozen = set(model.frozen_learners)
    if not train_old:  # old learners fixed, statistics included (restored afterwards)
        model.freeze(range(first_new))
    tasks = np.array([t_index[n] for n in task_names], dtype=np.int64)
    log = train_baim(
        model,
        images,
        tasks,
        replace(recipe.with_seed(seed), patience=0),  # an integration trains its fixed epochs
        label="BAIM continual",
        only=trainable,
        pretrained=set(range(first_new, len(model.learners))),
    )
    model.unfreeze(l for l in range(first_new) if l not in was_frozen)
    refit = touched_ids if not train_old else set(range(len(model.task_names)))
    fit_priors(model, images, np.where(np.isin(tasks, sorted(refit)), tasks, -1), seed=seed)
    model.eval()
    return {
        "newcomers": [
            {"task": n, "tier": lrn.spec.tier, "learner": first_new + i} for i, (lrn, n) in enumerate(newcomers)
        ],
        "touched_tasks": touched,
        "new_tasks": new_tasks,
        "untouched_tasks": [n for n in model.task_names if n not in touched],
        "untouched_learners": old_untouched if not train_old else [],
        "train_old": train_old,
        "parameters_before": params_before,
        "parameters_after": model.num_parameters(),
        "trained_parameters": sum(
            p.numel() for n, p in model.named_parameters() if p.requires_grad and (trainable is None or n in trainable)
        ),
        "log": log,
        "test_loss_before": before_loss,
        "test_loss_after": _losses(model, test_sets, recipe.kld_weight),
        # largest change of an untouched task's reconstruction (z = μ) on its test images
        "untouched_max_abs_diff": max(
            (float((before_out[k] - v).abs().max()) for k, v in _means(model, test_sets or {}, before_out).items()),
            default=None,
        ),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _losses(model: BAIM, test_sets: dict[str, np.ndarray] | None, kld_weight: float) -> dict[str, float]:
    if not test_sets:
        return {}
    return {
        name: reconstruction_metrics(model, x, model.task_names.index(name), kld_weight)["test_loss"]
        for name, x in test_sets.items()
        if name in model.task_names
    }


@torch.no_grad()
def _means(model: BAIM, test_sets: dict[str, np.ndarray], only: dict | None = None) -> dict[str, torch.Tensor]:
    """Reconstructions from z = μ (no noise: comparable across a latent that grew)."""
    model.eval()
    out = {}
    for name, x in test_sets.items():
        if name in model.task_names and (only is None or name in only):
            t = torch.full((len(x),), model.task_names.index(name), dtype=torch.long)
            out[name] = model(torch.from_numpy(x).float() / 255, t, sample=False).x_hat
    return out
