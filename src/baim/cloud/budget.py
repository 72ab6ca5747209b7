"""Budgeted partition: a compact task model that fits its edge's byte budget (DESIGN.md §4).

Why: the lossless compact model of task t holds squad t, its LSGate and adapters, and its
whole execution closure (feeder stages of other tasks' learners and the connections that read
them), so it is often 2-4× the bytes an edge of that task uploaded. An edge's capability tier
gives a byte budget. Where the lossless model fits, it is what is returned. Where it does not,
the cut is lossy and says so: it keeps the squad's most-used learners (how often the LSGate
picks each on the cloud's common data, :func:`baim.cloud.pruning.learner_usage`) that fit
without connections, then the strongest connections (|α|·‖P‖) whose closure still fits, and
reports exactly which learners and connections were left out. A learner left out of the squad
is really gone: its LSGate output, its adapter and, unless a kept connection reads it as a
feeder, all its stages.

Bytes are the length of the safetensors weights (:func:`baim.learners.weights_bytes`), i.e.
what is stored and sent.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..data import DataSet, load_dataset
from ..data.layout import Layout
from ..errors import ConfigError
from ..learners import weights_bytes
from ..models import BAIM, Connection, LSGate, Projection, fit_priors, load_model
from .partition import closure, partition
from .pipeline import common_data
from .pruning import learner_usage


def compact_bytes(model: BAIM) -> int:
    """What a compact model costs to store and send: the length of its safetensors weights."""
    return len(weights_bytes(model))


def partition_within_budget(
    model: BAIM, task: int, budget_bytes: int, usage: dict[int, torch.Tensor]
) -> tuple[BAIM, dict[str, Any]]:
    """The compact model of ``task`` in at most ``budget_bytes``, and what it left out.

    Lossless (:func:`partition`) where that fits. Otherwise: the squad's most-used learners
    (``usage[task]``, counts per squad position) that fit together without connections, then
    the strongest connections whose closure still fits. Raises ConfigError naming the smallest
    size possible (one learner, no connections) when not even that fits. ``model`` is not
    modified."""
    if budget_bytes < 1:
        raise ConfigError(f"a byte budget must be positive, got {budget_bytes}")
    counts = usage[task]
    if len(counts) != len(model.squad(task)):
        raise ConfigError(f"usage of task {task} has {len(counts)} entries, its squad {len(model.squad(task))}")
    lossless = partition(model, task)
    origin = _kept(model, task)  # learner of `lossless` -> learner of `model`
    size = compact_bytes(lossless)
    if size <= budget_bytes:
        return lossless, {"lossless": True} | _report(model, task, lossless, origin, budget_bytes, size, size)
    squad = _most_used_that_fit(lossless, counts, budget_bytes, model.task_names[task])
    connections = _strongest_that_fit(lossless, squad, budget_bytes)
    work = _variant(lossless, squad, connections)
    compact = partition(work, 0)
    origin = [origin[l] for l in _kept(work, 0)]
    assert len(origin) == len(compact.learners), "_kept must follow partition's choice of learners"
    return compact, {"lossless": False} | _report(
        model, task, compact, origin, budget_bytes, compact_bytes(compact), size
    )


def _kept(model: BAIM, task: int) -> list[int]:
    """The learners :func:`partition` keeps, in its order: squad and feeders, by index."""
    need, _ = closure(model, task)
    return sorted(set(model.squad(task)) | set(need["enc"]) | set(need["dec"]))


def _variant(compact: BAIM, squad: list[int], connections: list[str]) -> BAIM:
    """A copy of a compact model whose squad is cut to ``squad`` and whose connections to
    ``connections``; :func:`partition` of it drops what no longer runs."""
    work = copy.deepcopy(compact)
    for name in [n for n in work.conn_keys if n not in connections]:
        work.remove_connection(name)
    positions = [p for p, l in enumerate(work.squad(0)) if l in squad]
    work.lsgates[0] = _gate_rows(work, work.lsgate(0), positions)
    for l in work.squad(0):
        if l not in squad:
            work.learner_tasks[l] = None  # out of the squad: kept only as a feeder, if read
    return work


def _gate_rows(model: BAIM, gate: LSGate, positions: list[int]) -> LSGate:
    """The LSGate over the squad positions ``positions`` only (its output rows selected)."""
    smaller = LSGate(model.latent_dim, len(positions), model.gate_hidden)
    rows = torch.tensor(positions, dtype=torch.long)
    state = gate.state_dict()
    for key in ("net.2.weight", "net.2.bias", "noise.weight", "noise.bias", "active"):
        state[key] = state[key][rows]
    smaller.load_state_dict(state)
    return smaller


def _most_used_that_fit(compact: BAIM, counts: torch.Tensor, budget: int, name: str) -> list[int]:
    """Squad learners, most used first, each kept if it fits beside those kept (no connections).
    Learners the LSGate cannot select (learner-level pruning) come last and never alone."""
    squad, active = compact.squad(0), compact.lsgate(0).active
    order = sorted(range(len(squad)), key=lambda p: (not bool(active[p]), -float(counts[p]), p))
    kept: list[int] = []
    for p in order:
        if not kept and not active[p]:
            break
        if compact_bytes(partition(_variant(compact, [*kept, squad[p]], []), 0)) <= budget:
            kept.append(squad[p])
    if not kept:
        raise ConfigError(
            f"no compact model of task {name!r} fits {budget:,} bytes: the smallest possible is "
            f"{_smallest(compact):,} bytes (one learner, no connections)"
        )
    return sorted(kept)


def smallest_bytes(model: BAIM, task: int) -> int:
    """The fewest bytes a compact model of ``task`` can have: one selectable learner of its
    squad, no connections."""
    return _smallest(partition(model, task))


def _smallest(compact: BAIM) -> int:
    active = compact.lsgate(0).active
    return min(
        compact_bytes(partition(_variant(compact, [l], []), 0)) for p, l in enumerate(compact.squad(0)) if active[p]
    )


def _strongest_that_fit(compact: BAIM, squad: list[int], budget: int) -> list[str]:
    """Connections, strongest (|α|·‖P‖) first, each kept if the closure with it still fits.
    One that reads into nothing that runs yet waits until the closure has grown to its target."""
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
            if compact_bytes(partition(work, 0)) <= budget:
                kept.append(name)
                grew = True
    return kept


def _report(
    model: BAIM, task: int, compact: BAIM, origin: list[int], budget: int, size: int, lossless_size: int
) -> dict[str, Any]:
    """What was kept and left out, in ``model``'s learner indices and connection names."""
    squad = [origin[l] for l in compact.squad(0)]
    kept_connections = sorted(
        Connection(c.side, origin[c.src], c.src_stage, origin[c.dst], c.dst_stage).name
        for c in compact.conn_keys.values()
    )
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
    run = Path(run_dir)
    record, config = run / "state" / "partition.json", run / "config.json"
    strategy = "finetune"
    if record.is_file():
        strategy = json.loads(record.read_text())["result"]["source_strategy"]
    elif config.is_file():
        strategies = json.loads(config.read_text())["strategies"]
        strategy = "finetune" if "finetune" in strategies else strategies[0]
    return cast(BAIM, load_model(run / "cloud" / f"baim-{strategy}", "baim"))


def run_inputs(run_dir: str | Path) -> tuple[Layout, DataSet, BAIM]:
    """A finished run's layout, its data set and the BAIM it partitioned."""
    layout = Layout.load(Path(run_dir) / "layout.json")
    return layout, load_dataset(layout.dataset, layout.data_dir), source_baim(run_dir)


def budgeted_from_run(run_dir: str | Path, task: str, budget_bytes: int) -> tuple[BAIM, dict[str, Any]]:
    """:func:`partition_within_budget` of a run's BAIM for ``task``, with LSGate usage measured
    on the cloud's common data. A lossy cut also refits the task's latent prior on that data,
    since the squad's posterior changed with the encoders and connections it lost."""
    layout, ds, baim = run_inputs(run_dir)
    if task not in layout.task_names:
        raise ConfigError(f"unknown task {task!r}; this run's tasks are {layout.task_names}")
    t = layout.task_names.index(task)
    images, tasks = common_data(layout, ds)
    compact, report = partition_within_budget(baim, t, budget_bytes, learner_usage(baim, images, tasks))
    if not report["lossless"]:
        own = images[tasks == t]
        fit_priors(compact, own, np.zeros(len(own), dtype=np.int64))
    report["prior_refitted"] = not report["lossless"]
    return compact, report
