"""Phase 4 as one call: fuse accepted uploads with a strategy, train on common data, fit the
latent priors, evaluate per task, and save the BAIM with its per-epoch log.

Used by ``baim run`` and ``baim cloud train`` alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data import DataSet, to_uint8
from ..data.layout import Layout
from ..learners import StagedVAE
from ..metrics import fid
from ..presets import Preset
from .fusion import fuse
from .io import save_baim
from .model import BAIM
from .train import CloudConfig, evaluate_baim, fit_priors, task_accuracy, train_baim


def common_data(layout: Layout, ds: DataSet) -> tuple[np.ndarray, np.ndarray]:
    """The cloud's common images and the task of each (from its class)."""
    images = ds.train.load(layout.cloud)
    cls_task = {c: t for t, task in enumerate(layout.tasks) for c in task["classes"]}
    tasks = np.array([cls_task[int(c)] for c in np.asarray(ds.train.labels)[layout.cloud]], dtype=np.int64)
    return images, tasks


@torch.no_grad()
def baim_fid(model: BAIM, ds: DataSet, layout: Layout, task: int, n: int, extractor: str, seed: int = 0,
             local_task: int | None = None) -> dict:
    """FID of the model's samples for one layout task, from the fitted prior and from N(0, I).

    ``local_task`` is the task's index inside ``model`` when it differs from the layout's
    (a compact model has one task, index 0)."""
    test_idx = layout.test[layout.task_names[task]]
    n = min(n, len(test_idx) // 2)
    real, baseline = ds.test.load(test_idx[:n]), ds.test.load(test_idx[n:2 * n])
    mt = task if local_task is None else local_task
    fitted = to_uint8(model.generate(mt, n, torch.Generator().manual_seed(seed)))
    standard = to_uint8(model.generate(mt, n, torch.Generator().manual_seed(seed), standard_prior=True))
    a, b = fid(real, fitted, baseline, extractor), fid(real, standard, baseline, extractor)
    return {"fid": a.fid, "fid_standard_prior": b.fid, "fid_real_vs_real": a.real_vs_real,
            "fid_extractor": extractor, "fid_count": n,
            "_images": {"samples": fitted, "standard_prior": standard}}


def train_strategy(learners: list[StagedVAE], learner_tasks: list[int], layout: Layout, ds: DataSet,
                   preset: Preset, strategy: str, out_dir: str | Path, seed: int = 0,
                   fid_extractor: str = "domain", epochs: int | None = None) -> tuple[BAIM, dict]:
    images, tasks = common_data(layout, ds)
    model = fuse(learners, learner_tasks, layout.task_names, strategy=strategy, top_k=preset.top_k,
                 height=preset.height, seed=seed)
    n_candidates = len(model.connections)
    curve_sets = {t: ds.test.load(layout.test[name][: preset.curve_test_per_task or None])
                  for t, name in enumerate(layout.task_names)}
    cfg = CloudConfig(epochs=epochs or preset.cloud_epochs, batch_size=preset.cloud_batch_size, lr=preset.lr,
                      lr_decay=preset.lr_decay, kld_weight=preset.kld_weight,
                      prune_interval=preset.prune_interval, prune_ratio=preset.prune_ratio, seed=seed)
    log = train_baim(model, images, tasks, cfg, test_sets=curve_sets, label=f"BAIM {strategy}")
    fit_priors(model, images, tasks, seed=seed)
    per_task = {}
    samples = {}
    for t, name in enumerate(layout.task_names):
        test = ds.test.load(layout.test[name])
        ev = evaluate_baim(model, test, t, preset.kld_weight)
        f = baim_fid(model, ds, layout, t, preset.fid_samples, fid_extractor, seed)
        samples[name] = f.pop("_images")
        per_task[name] = {**ev, **f}
    result = {
        "strategy": strategy, "candidates": n_candidates, "connections": len(model.connections),
        "parameters": model.num_parameters(), "curve": log,
        "final_test_loss": float(np.mean([v["test_loss"] for v in per_task.values()])),
        "per_task": per_task, "fid": {k: v["fid"] for k, v in per_task.items()},
        "tsgate_accuracy": task_accuracy(model, *_test_with_tasks(layout, ds)),
    }
    save_baim(model, out_dir, {"log.json": json.dumps(result, indent=2) + "\n"})
    result["_images"] = samples
    return model, result


def _test_with_tasks(layout: Layout, ds: DataSet) -> tuple[np.ndarray, np.ndarray]:
    idx, tasks = [], []
    for t, name in enumerate(layout.task_names):
        idx += layout.test[name]
        tasks += [t] * len(layout.test[name])
    return ds.test.load(idx), np.array(tasks)
