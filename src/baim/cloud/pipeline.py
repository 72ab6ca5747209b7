"""Phase 4 as one call: fuse accepted uploads with a strategy, train on common data, fit the
latent priors, evaluate per task, and save the BAIM with its per-epoch log.

Used by ``baim run`` and ``baim cloud train`` alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Preset
from ..data import DataSet
from ..data.layout import Layout
from ..learners import StagedVAE
from ..models import BAIM, Evaluation, evaluate, fit_priors, save_model, task_accuracy, train_baim
from .fusion import fuse


def common_data(layout: Layout, ds: DataSet, val: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The cloud's common images and the task of each (from its class); ``val``: the common
    data's validation part instead (empty in a layout made without one)."""
    part = layout.cloud_val if val else layout.cloud
    images = ds.train.load(part)
    cls_task = {c: t for t, task in enumerate(layout.tasks) for c in task["classes"]}
    tasks = np.array([cls_task[int(c)] for c in np.asarray(ds.train.labels)[part]], dtype=np.int64)
    return images, tasks


def evaluate_tasks(
    model: BAIM, layout: Layout, ds: DataSet, preset: Preset, extractor: str, seed: int = 0
) -> dict[str, Evaluation]:
    """:func:`baim.models.evaluate` of every task of a BAIM, on the layout's test sets."""
    out = {}
    for t, name in enumerate(layout.task_names):
        real, baseline = layout.fid_sets(ds, name, preset.fid_count)
        out[name] = evaluate(
            model,
            ds.test.load(layout.test[name]),
            real,
            baseline,
            extractor,
            task=t,
            kld_weight=preset.cloud.kld_weight,
            seed=seed,
        )
    return out


def train_strategy(
    learners: list[StagedVAE],
    learner_tasks: list[int],
    layout: Layout,
    ds: DataSet,
    preset: Preset,
    strategy: str,
    out_dir: str | Path,
    seed: int = 0,
    fid_extractor: str = "domain",
    screening_losses: list[float] | None = None,
    evaluator: Callable[..., dict[str, Evaluation]] = evaluate_tasks,
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Fuse, measure at step 0, train, fit priors, evaluate and save; returns the JSON result
    and, per task, the generated images behind its FIDs (step 0 ones under ``step0_*``).
    ``evaluator`` (same signature as :func:`evaluate_tasks`) scores the BAIM: a caller that
    meters training passes a wrapper that books evaluation apart. With
    ``preset.cloud_evaluation`` off nothing is scored: ``per_task`` and ``step0`` are empty,
    ``final_test_loss`` is None and no images come back."""
    if not preset.cloud_evaluation:
        evaluator = _unscored
    images, tasks = common_data(layout, ds)
    model = fuse(
        learners,
        learner_tasks,
        layout.task_names,
        strategy=strategy,
        top_k=preset.top_k,
        height=preset.height,
        seed=seed,
        screening_losses=screening_losses if preset.gate_init_from_screening else None,
        cross_task=preset.cross_task_connections,
        projection_rank=preset.projection_rank,
        connections=preset.connections,
        max_sources=preset.max_sources,
    )
    # Step 0: the fused model as it starts, its priors fitted the same way as after training.
    fit_priors(model, images, tasks, seed=seed)
    step0 = evaluator(model, layout, ds, preset, fid_extractor, seed)
    n_candidates = len(model.connections)
    curve_sets = {
        t: ds.test.load(ids)
        for t, name in enumerate(layout.task_names)
        if (ids := preset.curve_ids(layout.test[name])) is not None
    }
    log = train_baim(
        model,
        images,
        tasks,
        preset.cloud.with_seed(seed),
        test_sets=curve_sets,
        label=f"BAIM {strategy}",
        prune_interval=preset.prune_interval,
        prune_ratio=preset.prune_ratio,
        prune_anneal=preset.prune_anneal,
        pretrained=set() if strategy == "scratch" else set(range(len(learners))),
        val=common_data(layout, ds, val=True) if preset.cloud.patience and layout.cloud_val else None,
    )
    fit_priors(model, images, tasks, seed=seed)
    evals = evaluator(model, layout, ds, preset, fid_extractor, seed)
    per_task = {name: ev.metrics for name, ev in evals.items()}
    result = {
        "strategy": strategy,
        "candidates": n_candidates,
        "connections": len(model.connections),
        "parameters": model.num_parameters(),
        "curve": log,
        "final_test_loss": float(np.mean([v["test_loss"] for v in per_task.values()])) if per_task else None,
        "per_task": per_task,
        "step0": {name: ev.metrics for name, ev in step0.items()},
        "recipe": asdict(preset.cloud) | {"gate_init_from_screening": preset.gate_init_from_screening},
        "tsgate_accuracy": task_accuracy(model, *_test_with_tasks(layout, ds)),
    }
    save_model(model, out_dir, {"log.json": json.dumps(result, indent=2) + "\n"})
    images_out = {name: ev.images for name, ev in evals.items()}
    for name, ev in step0.items():
        images_out[name] |= {f"step0_{k}": v for k, v in ev.images.items()}
    return result, images_out


def _unscored(*_: Any, **__: Any) -> dict[str, Evaluation]:
    """The evaluator of a BAIM that is not scored (``cloud_evaluation`` off)."""
    return {}


def _test_with_tasks(layout: Layout, ds: DataSet) -> tuple[np.ndarray, np.ndarray]:
    idx: list[int] = []
    tasks: list[int] = []
    for t, name in enumerate(layout.task_names):
        idx += layout.test[name]
        tasks += [t] * len(layout.test[name])
    return ds.test.load(idx), np.array(tasks)
