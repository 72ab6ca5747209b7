"""Learner-level pruning: learners their LSGate (almost) never picks leave selection.

Selection is the decoder side's (the LSGate picks top-K decoders from z), so that is what
pruning takes away: a deselected learner's encoder stays, because it is one of its squad's
posterior experts and removing it would move every z of the task. Its decoder is *trimmed*,
not merged: stages that a still-executed stage reads through a surviving connection stay
(only as deep as read, transitively, without a head, like a feeder in a compact model); a
decoder nobody reads goes entirely (stages, head, latent-in map and adapter), so the
parameter count drops by its size. Folding a read stage into its reader is not exact
(a projection reads raw features through non-linear stages), so it is not done.

Nothing else changes: samples on which the gate did not pick a removed learner decode
exactly as before, and other tasks not at all. :func:`prune_learners_in_run` does this to a
run's trained BAIM and measures parameters and quality on both sides.

Connection pruning is the BAIM's own (:meth:`baim.models.BAIM.prune_connections`), since
the training loop runs it on a schedule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import default_extractor
from ..data import to_float
from ..errors import ConfigError, ModelFileError
from ..models import BAIM, is_saved, load_model, save_model
from ..runview import Run
from .partition import partition
from .pipeline import common_data, evaluate_tasks


@torch.no_grad()
def learner_usage(model: BAIM, images: np.ndarray, tasks: np.ndarray, batch_size: int = 256) -> dict[int, torch.Tensor]:
    """How often each task's LSGate picks each squad position (counts, int64) on ``images``
    (uint8 N×C×H×W) of ``tasks``, as served: eval mode, z = posterior mean, plain top-K.
    Every task of the model has an entry; each picks min(K, selectable) learners per image."""
    was_training = model.training
    model.eval()
    counts = {t: torch.zeros(len(model.squad(t)), dtype=torch.long) for t in range(len(model.task_names))}
    tasks = np.asarray(tasks)
    for i in range(0, len(images), batch_size):
        x = to_float(images[i : i + batch_size])
        t_batch = torch.from_numpy(tasks[i : i + batch_size].astype(np.int64))
        mu, _, _ = model.posterior(x, t_batch)
        for t in t_batch.unique().tolist():
            picked = model.lsgate(t)(mu[t_batch == t], model.top_k, False).indices
            counts[t] += torch.bincount(picked.flatten(), minlength=len(counts[t]))
    model.train(was_training)
    return counts


def prune_learners(model: BAIM, usage: dict[int, torch.Tensor], threshold: float = 0.01) -> list[int]:
    """Remove from selection every learner its LSGate picks for less than ``threshold`` of
    its task's assignments (``usage[task]`` = counts per squad position, e.g. from
    :func:`learner_usage`; with K picks per image a learner's share is at most 1/K), then
    trim the decoders of all deselected learners (see the module docstring). At least one
    learner per squad always stays selectable. Returns the learners deselected now."""
    if not 0 <= threshold <= 1:
        raise ConfigError(f"learner pruning threshold must be in [0, 1], got {threshold}")
    dropped: list[int] = []
    for t, counts in usage.items():
        total = float(counts.sum())
        if total == 0:
            continue
        top = int(counts.argmax())
        for pos, learner in enumerate(model.squad(t)):
            if float(counts[pos]) / total < threshold and pos != top and model.selectable(learner):
                model.deselect(learner)
                dropped.append(learner)
    _trim_deselected(model)
    return dropped


def _deselected(model: BAIM) -> set[int]:
    """Learners of a squad that their LSGate can no longer pick."""
    return {l for t in range(len(model.task_names)) for l in model.squad(t) if not model.selectable(l)}


def _trim_deselected(model: BAIM) -> None:
    """Cut every deselected learner's decoder to the stages executed stages still read.

    A decoder stage is executed if its learner is selectable, or if its raw output is read
    by a connection into a stage whose mixed output is consumed; the mixed output of a
    trimmed learner's last kept stage is consumed by nothing, so connections into it go too.
    Computed as a fixed point, so chains of deselected learners are trimmed as far as they can be.
    """
    out = _deselected(model)
    if not out:
        return
    conns = [(name, c) for name, c in model.conn_keys.items() if c.side == "dec"]
    need = {l: len(model.stage_modules("dec", l)) for l in range(len(model.learners)) if l not in out}
    live: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, c in conns:
            if name in live or not (c.dst not in out or c.dst_stage < need.get(c.dst, 0) - 1):
                continue
            live.add(name)
            if need.get(c.src, 0) < c.src_stage + 1:
                need[c.src] = c.src_stage + 1
            changed = True
    for name, c in conns:
        if c.dst in out and name not in live:
            model.remove_connection(name)
    for l in sorted(out):
        model.trim(l, "dec", need.get(l, 0))


def prune_learners_in_run(
    run_dir: str | Path, threshold: float, strategy: str = "finetune", out: str | Path | None = None
) -> dict[str, Any]:
    """Prune the learners of a run's trained BAIM (``RUN/cloud/baim-STRATEGY``) that
    their LSGate picks for less than ``threshold`` of the cloud's common data, and measure
    what it costs: parameters of the BAIM and of each task's compact model, and every number
    of the run's own evaluation (test loss, MSE/PSNR, FID/KID per sampling procedure, same
    test images, seed and latent priors on both sides) before and after.

    The pruned BAIM goes to ``out`` (default ``RUN/cloud/baim-STRATEGY-pruned``) with the
    report beside it as ``pruning.json``; the run's own files are not touched. Returns the report."""
    run = Run(run_dir)
    source = run.files.baim(strategy)
    target = Path(out) if out is not None else run.files.pruned(strategy)
    if not is_saved(source):
        raise ModelFileError(f"{source}: no trained BAIM of strategy {strategy!r} in this run (train it first)")
    if target.resolve() == source.resolve():
        raise ConfigError(f"{target} is the run's trained BAIM itself; write the pruned one elsewhere")
    model = load_model(source, "baim")
    assert isinstance(model, BAIM)
    layout = run.layout
    ds = run.dataset()
    cfg = run.config  # the run's own FID network and seed, so "before" is the run's evaluation
    extractor = cfg.fid_extractor if cfg is not None else default_extractor(layout.dataset)
    seed = cfg.seed if cfg is not None else layout.seed
    edges = run.learner_edges(strategy)

    def measure() -> dict[str, Any]:
        evals = evaluate_tasks(model, layout, ds, layout.settings, extractor, seed)
        return {
            "parameters": model.num_parameters(),
            "compact_parameters": {n: partition(model, t).num_parameters() for t, n in enumerate(layout.task_names)},
            "per_task": {n: ev.metrics for n, ev in evals.items()},
        }

    images, tasks = common_data(layout, ds)
    usage = learner_usage(model, images, tasks)
    before = measure()
    dropped = prune_learners(model, usage, threshold)
    after = measure()
    report: dict[str, Any] = {
        "run": str(run.root),
        "strategy": strategy,
        "threshold": threshold,
        "out": str(target),
        "usage": {
            name: {
                "images": int((tasks == t).sum()),
                "learners": [
                    {
                        "learner": l,
                        "edge": _edge(edges, l),
                        "picks": int(usage[t][pos]),
                        "share": float(usage[t][pos]) / max(1, int(usage[t].sum())),
                        "selectable": model.selectable(l),
                    }
                    for pos, l in enumerate(model.squad(t))
                ],
            }
            for t, name in enumerate(layout.task_names)
        },
        "dropped": [
            {
                "learner": l,
                "edge": _edge(edges, l),
                "task": next(n for t, n in enumerate(layout.task_names) if l in model.squad(t)),
                "decoder_stages_kept": len(model.stage_modules("dec", l)),
            }
            for l in dropped
        ],
        "before": before,
        "after": after,
    }
    save_model(model, target, {"pruning.json": json.dumps(report, indent=2) + "\n"})
    return report


def _edge(edges: list[int] | None, learner: int) -> int | None:
    return edges[learner] if edges is not None and learner < len(edges) else None
