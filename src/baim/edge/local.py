"""An edge node's work on its own data: build the learner of its tier, train it, evaluate it.

These functions read the federation layout to find the edge's slice; in a real deployment an
edge holds only its own slice, and the layout is simply how this reference implementation
makes that slice repeatable.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ..config import default_extractor
from ..data import DataSet, load_dataset
from ..data.layout import Layout
from ..errors import ConfigError
from ..learners import StagedVAE, tier_spec
from ..models import evaluate, load_model, reconstruction_metrics, save_model
from .train import train_learner


def build_learner(tier: str, ds: DataSet, seed: int) -> StagedVAE:
    torch.manual_seed(seed)
    return StagedVAE(tier_spec(tier, ds.image_size, ds.channels))


def task_index(layout: Layout, task: str | int) -> int:
    names = layout.task_names
    if isinstance(task, int) or str(task).isdigit():
        t = int(task)
        if not 0 <= t < len(names):
            raise ConfigError(f"task index {t} out of range; tasks are {names}")
        return t
    if task not in names:
        raise ConfigError(f"unknown task {task!r}; tasks are {names}")
    return names.index(task)


def evaluate_saved_model(
    model_dir: str | Path,
    layout_path: str | Path,
    task: str | int,
    fid_extractor: str | None = None,
    fid_count: int = 500,
    seed: int = 0,
) -> dict:
    """``baim evaluate``: any saved model (learner or compact) on one task of a layout. A
    learner is scored without a fitted prior here (no private data at hand): standard and
    reconstruction procedures only."""
    layout = Layout.load(layout_path)
    ds = load_dataset(layout.dataset, layout.data_dir)
    t = task_index(layout, task)
    model = load_model(model_dir)
    if not isinstance(model, StagedVAE) and model.tsgate is not None:
        raise ConfigError(f"{model_dir} is a whole BAIM; evaluate its compact models (cloud/compact/TASK)")
    name = layout.task_names[t]
    fid_extractor = fid_extractor or default_extractor(layout.dataset)
    real, baseline = layout.fid_sets(ds, name, fid_count)
    ev = evaluate(
        model,
        ds.test.load(layout.test[name]),
        real,
        baseline,
        fid_extractor,
        kld_weight=layout.settings.edge.kld_weight,
        seed=seed,
    )
    return {"task": name, **ev.metrics}


def train_edge(
    layout: Layout, ds: DataSet, edge: int, out_dir: str | Path, epochs: int | None = None, seed: int = 0
) -> tuple[StagedVAE, dict]:
    """Phase 1 for one edge: train its tier's learner on its slice, evaluate and save it."""
    if not 0 <= edge < len(layout.edges):
        raise ConfigError(f"edge {edge} not in layout (it has edges 0..{len(layout.edges) - 1})")
    preset = layout.settings
    e = layout.edges[edge]
    model = build_learner(e.tier, ds, seed + 1000 * edge)
    cfg = preset.edge_recipe(e.tier).with_seed(seed + 1000 * edge)
    if epochs is not None:
        cfg = replace(cfg, epochs=epochs)
    test = ds.test.load(layout.test[layout.task_names[e.task]])
    ids = preset.curve_ids(list(range(len(test))))
    curve = None if ids is None else test[ids]
    val = ds.train.load(e.val) if e.val else None
    hist = train_learner(
        model, ds.train.load(e.indices), cfg, label=f"edge {edge} ({e.tier})", eval_images=curve, val_images=val
    )
    metrics = {
        "edge": edge,
        "task": layout.task_names[e.task],
        "tier": e.tier,
        "samples": len(e.indices),
        "train": asdict(hist),
        **reconstruction_metrics(model, test, kld_weight=cfg.kld_weight),
    }
    save_model(model, out_dir, {"metrics.json": json.dumps(metrics, indent=2) + "\n"})
    return model, metrics


def train_edge_cli(
    layout_path: str | Path, edge: int, out_dir: str | Path, epochs: int | None = None, seed: int = 0
) -> dict:
    layout = Layout.load(layout_path)
    return train_edge(layout, load_dataset(layout.dataset, layout.data_dir), edge, out_dir, epochs, seed)[1]


def train_on_images(
    images_dir: str | Path,
    out_dir: str | Path,
    tier: str = "small",
    image_size: int = 32,
    channels: int = 1,
    epochs: int = 4,
    seed: int = 0,
) -> dict:
    """A learner trained on a folder of a user's own images (no layout: the user's data is the
    slice), with the edge recipe; a seeded 20 % is held out for its test loss. The saved folder
    can join a BAIM of the same geometry as a new task (``baim cloud add``)."""
    from ..config import Recipe
    from ..data.image_folder import read_images

    images = read_images(images_dir, image_size, channels)
    if len(images) < 10:
        raise ConfigError(f"{images_dir} holds {len(images)} images; train on at least 10")
    order = np.random.default_rng(seed).permutation(len(images))
    cut = max(1, len(images) // 5)
    test, train = images[order[:cut]], images[order[cut:]]
    torch.manual_seed(seed)
    model = StagedVAE(tier_spec(tier, image_size, channels))
    cfg = Recipe(epochs, seed=seed)
    hist = train_learner(model, train, cfg, label=f"learner ({tier}) on {images_dir}")
    metrics = {
        "images": str(images_dir),
        "tier": tier,
        "samples": len(train),
        "train": asdict(hist),
        **reconstruction_metrics(model, test, kld_weight=cfg.kld_weight),
    }
    save_model(model, out_dir, {"metrics.json": json.dumps(metrics, indent=2) + "\n"})
    return metrics
