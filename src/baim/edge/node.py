"""An edge node's work on its own data: build the learner of its tier, train it, evaluate it.

These functions read the federation layout to find the edge's slice; in a real deployment an
edge holds only its own slice, and the layout is simply how this reference implementation
makes that slice repeatable.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..data import DataSet, load_dataset, to_float, to_uint8
from ..data.layout import Layout
from ..learners import StagedVAE, load_learner, save_learner, tier_spec
from ..metrics import evaluate_reconstruction, fid
from ..presets import get_preset
from .train import TrainConfig, train_learner


def build_learner(tier: str, ds: DataSet, seed: int) -> StagedVAE:
    torch.manual_seed(seed)
    return StagedVAE(tier_spec(tier, ds.image_size, ds.channels))


def task_index(layout: Layout, task: str | int) -> int:
    names = layout.task_names
    if isinstance(task, int) or str(task).isdigit():
        t = int(task)
        if not 0 <= t < len(names):
            raise ValueError(f"task index {t} out of range; tasks are {names}")
        return t
    if task not in names:
        raise ValueError(f"unknown task {task!r}; tasks are {names}")
    return names.index(task)


@torch.no_grad()
def fid_of_model(model: StagedVAE, ds: DataSet, layout: Layout, task: int, n: int,
                 extractor: str, seed: int = 0) -> dict:
    """FID of prior samples and of test reconstructions, each with real-vs-real at n.

    The task's test set provides the n real reference images and a disjoint second n for the
    baseline; n is capped at half the test set so the two never overlap.
    """
    test_idx = layout.test[layout.task_names[task]]
    n = min(n, len(test_idx) // 2)
    real, baseline = ds.test.load(test_idx[:n]), ds.test.load(test_idx[n:2 * n])
    model.eval()
    samples = to_uint8(model.sample(n, generator=torch.Generator().manual_seed(seed)))
    recon = to_uint8(model.decode(model.encode(to_float(baseline))[0]))
    s, r = fid(real, samples, baseline, extractor), fid(real, recon, baseline, extractor)
    return {"fid_samples": s.fid, "fid_reconstructions": r.fid, "fid_real_vs_real": s.real_vs_real,
            "fid_extractor": extractor, "fid_count": n,
            "_images": {"samples": samples, "reconstructions": recon}}


def evaluate_edge_model(model_dir: str | Path, layout_path: str | Path, task: str | int,
                        fid_extractor: str = "domain", fid_samples: int = 500, seed: int = 0) -> dict:
    layout = Layout.load(layout_path)
    ds = load_dataset(layout.dataset, layout.data_dir)
    t = task_index(layout, task)
    model = load_learner(model_dir)
    test = ds.test.load(layout.test[layout.task_names[t]])
    out = {"task": layout.task_names[t], **evaluate_reconstruction(model, test)}
    f = fid_of_model(model, ds, layout, t, fid_samples, fid_extractor, seed)
    f.pop("_images")
    return {**out, **f}


def train_edge(layout: Layout, ds: DataSet, edge: int, out_dir: str | Path, epochs: int | None = None,
               seed: int = 0) -> tuple[StagedVAE, dict]:
    """Phase 1 for one edge: train its tier's learner on its slice, evaluate and save it."""
    if not 0 <= edge < len(layout.edges):
        raise ValueError(f"edge {edge} not in layout (it has edges 0..{len(layout.edges) - 1})")
    preset = get_preset(layout.preset)
    e = layout.edges[edge]
    model = build_learner(e.tier, ds, seed + 1000 * edge)
    cfg = TrainConfig(epochs=epochs or preset.edge_epochs, batch_size=preset.batch_size,
                      lr=preset.lr, lr_decay=preset.lr_decay, kld_weight=preset.kld_weight,
                      seed=seed + 1000 * edge)
    test = ds.test.load(layout.test[layout.task_names[e.task]])
    curve = test[: preset.curve_test_per_task or None]
    hist = train_learner(model, ds.train.load(e.indices), cfg, label=f"edge {edge} ({e.tier})",
                         eval_images=curve)
    metrics = {"edge": edge, "task": layout.task_names[e.task], "tier": e.tier,
               "samples": len(e.indices), "train": asdict(hist),
               **evaluate_reconstruction(model, test, cfg.kld_weight)}
    save_learner(model, out_dir, {"metrics.json": json.dumps(metrics, indent=2) + "\n"})
    return model, metrics


def train_edge_cli(layout_path: str | Path, edge: int, out_dir: str | Path, epochs: int | None = None,
                   seed: int = 0) -> dict:
    layout = Layout.load(layout_path)
    return train_edge(layout, load_dataset(layout.dataset, layout.data_dir), edge, out_dir, epochs, seed)[1]
