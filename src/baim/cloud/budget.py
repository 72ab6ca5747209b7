"""Budgeted partition: a compact task model that fits its edge's byte budget.

Why: the lossless compact model of task t holds squad t, its LSGate and adapters, and its
whole execution closure (feeder stages of other tasks' learners and the connections that read
them), so it is often 2-4× the bytes an edge of that task uploaded. An edge's capability tier
gives a byte budget. Where the lossless model fits, it is what is returned. Where it does not,
the cut is lossy and says so. Which learners and connections stay is chosen one of two ways:

- ``select="loss"`` (the default): greedy forward selection by the training objective
  (MSE + β·KL, seeded posterior noise) measured on the cloud's common images of the task
  (at most 256, never test images). Start from the squad learner whose one-learner model
  has the lowest loss; add the learner that lowers the loss most while the model fits, until
  none does; then the connections, strongest (|α|·‖P‖) first, each kept only if the model
  still fits and the loss drops. A step must lower the loss by at least :data:`MIN_GAIN`
  (0.1 %) of it, so that no bytes go to gains that don't matter. Usage is a poor guide to
  this: on runs/quick the tops gate picks learner 5 for 2 % of its choices, yet 5 is the
  learner that lowers the loss most beside learner 0, while the much-used learner 3 raises it
  (usage keeps [0, 3] at test loss 0.105; learner 0 alone gives 0.029, [0, 5] 0.026).
- ``select="usage"``: the squad's most-used learners (how often the LSGate picks each on the
  cloud's common data, :func:`baim.cloud.pruning.learner_usage`) that fit without
  connections, then the strongest connections whose closure still fits. No model is run.

A learner left out of the squad is really gone: its LSGate output, its adapter and, unless a
kept connection reads it as a feeder, all its stages. The report names exactly which learners
and connections were left out.

A squad with one selectable learner gets an LSGate of hidden width 1: with one learner to
pick, top-K picks it with weight softmax([s]) = 1 whatever the gate computes, so the 33 KB
of a 64-wide gate buy nothing (exact; the lossless model of a one-learner squad is slimmed too).

Bytes are the length of the safetensors weights (:func:`baim.learners.weights_bytes`), i.e.
what is stored and sent.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from ..data import DataSet, to_float
from ..data.layout import Layout
from ..errors import ConfigError
from ..learners import weights_bytes
from ..models import BAIM, Connection, Projection, fit_priors
from ..runview import Run
from .partition import closure, partition
from .pipeline import common_data
from .pruning import learner_usage

SELECTIONS = ("loss", "usage")
MAX_IMAGES = 256  # common images a loss-based selection measures on (cost grows with it)
MIN_GAIN = 1e-3  # a greedy step must lower the loss by this fraction: no bytes for gains that don't matter


def compact_bytes(model: BAIM) -> int:
    """What a compact model costs to store and send: the length of its safetensors weights."""
    return len(weights_bytes(model))


def partition_within_budget(
    model: BAIM,
    task: int,
    budget_bytes: int,
    *,
    select: str = "loss",
    images: np.ndarray | None = None,
    usage: dict[int, torch.Tensor] | None = None,
    kld_weight: float = 0.00025,
    seed: int = 0,
) -> tuple[BAIM, dict[str, Any]]:
    """The compact model of ``task`` in at most ``budget_bytes``, and what it left out.

    Lossless (:func:`partition`, its gate slimmed when one learner is selectable) where that
    fits. Otherwise ``select="loss"`` needs ``images`` (uint8 N×C×H×W, the task's common
    images; the first :data:`MAX_IMAGES` are used) and ``kld_weight`` (β of the objective),
    ``select="usage"`` needs ``usage`` (LSGate picks per squad position of every task). Raises
    ConfigError naming the smallest size possible (one learner, no connections) when not even
    that fits. ``model`` is not modified."""
    if budget_bytes < 1:
        raise ConfigError(f"a byte budget must be positive, got {budget_bytes}")
    if select not in SELECTIONS:
        raise ConfigError(f"select must be one of {SELECTIONS}, got {select!r}")
    counts = (usage or {}).get(task)
    if select == "usage" and (counts is None or len(counts) != len(model.squad(task))):
        raise ConfigError(f"select='usage' needs the LSGate usage of every position of task {task}'s squad")
    if select == "loss" and (images is None or len(images) == 0):
        raise ConfigError("select='loss' needs common images of the task to measure the loss on")
    whole = partition(model, task)
    origin = _kept(model, task)  # learner of `whole` -> learner of `model`
    lossless = _slimmed(whole)
    size = compact_bytes(lossless)
    if size <= budget_bytes:
        report = _report(model, task, lossless, origin, budget_bytes, size, size)
        return lossless, {"lossless": True, "select": None} | report
    name = model.task_names[task]
    selection: dict[str, Any] = {}
    if select == "usage":
        assert counts is not None
        squad = _most_used_that_fit(whole, counts, budget_bytes, name)
        connections = _strongest_that_fit(whole, squad, budget_bytes)
    else:
        assert images is not None
        measure = _objective(images[:MAX_IMAGES], model.latent_dim, kld_weight, seed)
        squad, connections, steps = _greedy_by_loss(whole, budget_bytes, measure, name)
        for step in steps:  # in `model`'s learner indices and connection names
            if "learner" in step:
                step["learner"] = origin[step["learner"]]
            else:
                step["connection"] = _renamed(whole, step["connection"], origin)
        selection = {"images": len(images[:MAX_IMAGES]), "loss": steps[-1]["loss"], "steps": steps}
    work = _variant(whole, squad, connections)
    compact = partition(work, 0)
    kept = [origin[l] for l in _kept(work, 0)]
    assert len(kept) == len(compact.learners), "_kept must follow partition's choice of learners"
    report = _report(model, task, compact, kept, budget_bytes, compact_bytes(compact), size)
    return compact, {"lossless": False, "select": select} | report | ({"selection": selection} if selection else {})


def lossless_compact(model: BAIM, task: int) -> BAIM:
    """:func:`partition` of ``task``, its LSGate slimmed where one learner is selectable: the
    same outputs, the fewest bytes a lossless compact model of ``task`` takes here."""
    return _slimmed(partition(model, task))


def _slimmed(compact: BAIM) -> BAIM:
    return _cut(compact, compact.squad(0), list(compact.conn_keys))


def _kept(model: BAIM, task: int) -> list[int]:
    """The learners :func:`partition` keeps, in its order: squad and feeders, by index."""
    need, _ = closure(model, task)
    return sorted(set(model.squad(task)) | set(need["enc"]) | set(need["dec"]))


def _cut(compact: BAIM, squad: list[int], connections: list[str]) -> BAIM:
    """The compact model of :func:`_variant`: only what still runs."""
    return partition(_variant(compact, squad, connections), 0)


def _variant(compact: BAIM, squad: list[int], connections: list[str]) -> BAIM:
    """A copy of a compact model whose squad is cut to ``squad`` and whose connections to
    ``connections``; :func:`partition` of it drops what no longer runs."""
    work = copy.deepcopy(compact)
    for name in [n for n in work.conn_keys if n not in connections]:
        work.remove_connection(name)
    work.cut_squad(squad)
    return work


# -- selection by usage ---------------------------------------------------------------------------
def _most_used_that_fit(compact: BAIM, counts: torch.Tensor, budget: int, name: str) -> list[int]:
    """Squad learners, most used first, each kept if it fits beside those kept (no connections).
    Learners the LSGate cannot select (learner-level pruning) come last and never alone."""
    squad, active = compact.squad(0), compact.lsgate(0).active
    order = sorted(range(len(squad)), key=lambda p: (not bool(active[p]), -float(counts[p]), p))
    kept: list[int] = []
    for p in order:
        if not kept and not active[p]:
            break
        if compact_bytes(_cut(compact, [*kept, squad[p]], [])) <= budget:
            kept.append(squad[p])
    if not kept:
        raise _nothing_fits(compact, budget, name)
    return sorted(kept)


def _strongest_that_fit(compact: BAIM, squad: list[int], budget: int) -> list[str]:
    """Connections, strongest (|α|·‖P‖) first, each kept if the closure with it still fits.
    One that reads into nothing that runs yet waits until the closure has grown to its target."""
    return _connections(compact, squad, budget, lambda name, model: True)


def _connections(compact: BAIM, squad: list[int], budget: int, better: Callable[[str, BAIM], bool]) -> list[str]:
    """Connections, strongest first, each kept if the model with it fits and ``better`` (of
    its name and the cut model) says yes. One that reads into nothing that runs yet waits
    until the closure reaches it."""
    pending = sorted(compact.conn_keys, key=lambda n: (-cast(Projection, compact.connections[n]).score(), n))
    kept: list[str] = []
    grew = True
    while grew:
        grew = False
        for name in list(pending):
            work = _variant(compact, squad, [*kept, name])
            if name not in closure(work, 0)[1]:
                continue
            pending.remove(name)
            candidate = partition(work, 0)
            if compact_bytes(candidate) <= budget and better(name, candidate):
                kept.append(name)
                grew = True
    return kept


# -- selection by measured loss -------------------------------------------------------------------
def _objective(images: np.ndarray, latent_dim: int, kld_weight: float, seed: int) -> Callable[[BAIM], float]:
    """The training objective of a compact model on ``images``, as
    :func:`baim.models.reconstruction_metrics` measures test loss (MSE + β·KL, posterior noise
    drawn once from ``seed``), the same images and noise for every candidate."""
    x = to_float(images)
    noise = torch.randn(len(x), latent_dim, generator=torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def measure(compact: BAIM) -> float:
        out = compact.eval()(x, torch.zeros(len(x), dtype=torch.long), noise=noise)
        return float(F.mse_loss(out.x_hat, x) + kld_weight * out.kl().mean())

    return measure


def _greedy_by_loss(
    compact: BAIM, budget: int, measure: Callable[[BAIM], float], name: str
) -> tuple[list[int], list[str], list[dict[str, Any]]]:
    """Greedy forward selection (see the module docstring). Returns the squad, the
    connections and each step taken with the loss after it (learners are ``compact``'s)."""
    squad, active = compact.squad(0), compact.lsgate(0).active
    alone = {}
    for l in (l for p, l in enumerate(squad) if active[p]):  # never a deselected learner alone
        model = _cut(compact, [l], [])
        if compact_bytes(model) <= budget:
            alone[l] = measure(model)
    if not alone:
        raise _nothing_fits(compact, budget, name)
    first = min(alone, key=lambda l: (alone[l], l))
    kept, loss = [first], alone[first]
    steps: list[dict[str, Any]] = [{"learner": first, "loss": loss}]
    while True:
        trials = {}
        for l in (l for l in squad if l not in kept):
            model = _cut(compact, [*kept, l], [])
            if compact_bytes(model) <= budget:
                trials[l] = measure(model)
        best = min(trials, key=lambda l: (trials[l], l), default=None)
        if best is None or trials[best] > loss * (1 - MIN_GAIN):
            break
        kept.append(best)
        loss = trials[best]
        steps.append({"learner": best, "loss": loss})

    def better(connection: str, model: BAIM) -> bool:
        nonlocal loss
        new = measure(model)
        if new > loss * (1 - MIN_GAIN):
            return False
        loss = new
        steps.append({"connection": connection, "loss": loss})
        return True

    connections = _connections(compact, sorted(kept), budget, better)
    return sorted(kept), connections, steps


def _nothing_fits(compact: BAIM, budget: int, name: str) -> ConfigError:
    return ConfigError(
        f"no compact model of task {name!r} fits {budget:,} bytes: the smallest possible is "
        f"{_smallest(compact):,} bytes (one learner, no connections)"
    )


def smallest_bytes(model: BAIM, task: int) -> int:
    """The fewest bytes a compact model of ``task`` can have: one selectable learner of its
    squad, no connections."""
    return _smallest(partition(model, task))


def _smallest(compact: BAIM) -> int:
    active = compact.lsgate(0).active
    return min(compact_bytes(_cut(compact, [l], [])) for p, l in enumerate(compact.squad(0)) if active[p])


def _renamed(compact: BAIM, name: str, origin: list[int]) -> str:
    """A connection of ``compact`` by its name in the model ``origin`` maps learners into."""
    c = compact.conn_keys[name]
    return Connection(c.side, origin[c.src], c.src_stage, origin[c.dst], c.dst_stage).name


def _report(
    model: BAIM, task: int, compact: BAIM, origin: list[int], budget: int, size: int, lossless_size: int
) -> dict[str, Any]:
    """What was kept and left out, in ``model``'s learner indices and connection names."""
    squad = [origin[l] for l in compact.squad(0)]
    kept_connections = sorted(_renamed(compact, name, origin) for name in compact.conn_keys)
    return {
        "budget_bytes": budget,
        "bytes": size,
        "lossless_bytes": lossless_size,
        "kept_learners": squad,
        "dropped_learners": [l for l in model.squad(task) if l not in squad],
        "feeders": [origin[l] for l, t in enumerate(compact.learner_tasks) if t is None],
        "kept_connections": kept_connections,
        "dropped_connections": sorted(set(closure(model, task)[1]) - set(kept_connections)),
    }


# -- from a finished run ------------------------------------------------------------------------
def source_baim(run_dir: str | Path) -> BAIM:
    """The BAIM a run partitioned: the strategy its partition record names; before that phase,
    finetune's if the run trains it (as the workflow chooses), else its first strategy's."""
    return Run(run_dir).baim()


def selection_images(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """At most :data:`MAX_IMAGES` of ``images``, drawn without replacement (seeded), in order."""
    if len(images) <= MAX_IMAGES:
        return images
    return images[np.sort(np.random.default_rng(seed).choice(len(images), MAX_IMAGES, replace=False))]


def run_inputs(run_dir: str | Path) -> tuple[Layout, DataSet, BAIM]:
    """A finished run's layout, its data set and the BAIM it partitioned."""
    run = Run.open(run_dir)
    return run.layout, run.dataset(), run.baim()


def budgeted_from_run(
    run_dir: str | Path, task: str, budget_bytes: int, select: str = "loss"
) -> tuple[BAIM, dict[str, Any]]:
    """:func:`partition_within_budget` of a run's BAIM for ``task``, measured on the cloud's
    common data (the task's images for ``select="loss"``, with β of the run's cloud recipe;
    LSGate usage for ``"usage"``). A lossy cut also refits the task's latent prior on the
    task's common images, since the squad's posterior changed with the encoders and
    connections it lost."""
    layout, ds, baim = run_inputs(run_dir)
    if task not in layout.task_names:
        raise ConfigError(f"unknown task {task!r}; this run's tasks are {layout.task_names}")
    t = layout.task_names.index(task)
    images, tasks = common_data(layout, ds)
    own = images[tasks == t]
    compact, report = partition_within_budget(
        baim,
        t,
        budget_bytes,
        select=select,
        images=selection_images(own),
        usage=learner_usage(baim, images, tasks) if select == "usage" else None,
        kld_weight=layout.settings.cloud.kld_weight,
    )
    if not report["lossless"]:
        fit_priors(compact, own, np.zeros(len(own), dtype=np.int64))
    report["prior_refitted"] = not report["lossless"]
    return compact, report
