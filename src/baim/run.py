"""``baim run``: the workflow end to end into a resumable run directory.

Phases implemented so far: layout → local training of every edge → evaluation of the edge
models (test loss, reconstruction, FID with its baseline) → summary + figures. The cloud
phases (fusion, partition, deployment, personalisation) are added to this same sequence as
they land; ``summary.json`` says which phases ran.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .atomic import atomic_write, write_json
from .data import DataSet, load_dataset
from .data.layout import Layout, make_layout
from .edge import fid_of_model, train_edge
from .figures import image_grid, save_png
from .learners import load_learner
from .presets import get_preset

PHASES = ["layout", "local_training", "edge_evaluation", "summary"]


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), arr))


def run(out: str | Path, preset: str = "quick", seed: int = 0, data_dir: str | None = None,
        dataset: str = "fashion-mnist", fid_extractor: str = "domain") -> dict:
    from .rundir import RunDir

    started = time.perf_counter()
    p = get_preset(preset)
    rd = RunDir(out, {"preset": preset, "seed": seed, "dataset": dataset, "data_dir": data_dir,
                      "fid_extractor": fid_extractor, "engine": "inprocess"})
    ds = load_dataset(dataset, data_dir)

    def do_layout() -> dict:
        layout = make_layout(ds, p, seed=seed, data_dir=data_dir)
        layout.save(rd.path("layout.json"))
        return {"edges": len(layout.edges), "cloud": len(layout.cloud)}

    rd.phase("layout", do_layout)
    layout = Layout.load(rd.path("layout.json"))

    def do_local_training() -> list[dict]:
        rows = []
        for e in layout.edges:
            folder = rd.path("edges", f"edge-{e.edge}")
            if (folder / "spec.json").is_file():  # finished before an interruption
                rows.append(json.loads((folder / "metrics.json").read_text()))
                continue
            rows.append(train_edge(layout, ds, e.edge, folder, seed=seed)[1])
        return rows

    trained = rd.phase("local_training", do_local_training)

    def do_edge_evaluation() -> list[dict]:
        return [_evaluate_edge(rd.root, layout, ds, e.edge, p.fid_samples, fid_extractor, seed)
                for e in layout.edges]

    evaluated = rd.phase("edge_evaluation", do_edge_evaluation)

    def do_summary() -> dict:
        return _write_summary(rd, layout, ds, p.name, trained, evaluated, fid_extractor)

    summary = rd.phase("summary", do_summary)
    summary["wall_seconds_this_invocation"] = round(time.perf_counter() - started, 2)
    return summary


def _evaluate_edge(root: Path, layout: Layout, ds: DataSet, edge: int, n: int, extractor: str,
                   seed: int) -> dict:
    e = layout.edges[edge]
    model = load_learner(root / "edges" / f"edge-{edge}")
    f = fid_of_model(model, ds, layout, e.task, n, extractor, seed)
    _save_npy(root / "images" / f"edge-{edge}" / "initial_samples.npy", f.pop("_samples"))
    task = layout.task_names[e.task]
    real_path = root / "images" / "real" / f"{task}.npy"
    if not real_path.is_file():
        _save_npy(real_path, ds.test.load(layout.test[task][: f["fid_count"]]))
    return {"edge": edge, "task": task, "tier": e.tier, **f}


def _write_summary(rd, layout: Layout, ds: DataSet, preset: str, trained: list[dict],
                   evaluated: list[dict], extractor: str) -> dict:
    edges = []
    for t, ev in zip(trained, evaluated):
        edges.append({"edge": ev["edge"], "task": ev["task"], "tier": ev["tier"],
                      "samples": t["samples"], "fid_initial": ev["fid_samples"],
                      "fid_reconstructions_initial": ev["fid_reconstructions"],
                      "test_loss_initial": t["test_loss"], "mse_initial": t["mse"],
                      "psnr_initial": t["psnr"], "train_images_per_second": t["train"]["images_per_second"]})
    rvr = {ev["task"]: ev["fid_real_vs_real"] for ev in evaluated}
    grid = np.concatenate([np.load(rd.path("images", f"edge-{ev['edge']}", "initial_samples.npy"))[:8]
                           for ev in evaluated])
    save_png(image_grid(grid, ncol=8), rd.path("figures", "samples_edge_initial.png"))
    real = np.concatenate([np.load(rd.path("images", "real", f"{t}.npy"))[:8] for t in layout.task_names])
    save_png(image_grid(real, ncol=8), rd.path("figures", "real_test_images.png"))
    seconds = rd.phase_seconds()
    summary = {"preset": preset, "engine": "inprocess", "dataset": ds.name,
               "phases_run": [k for k in PHASES if k in seconds or k == "summary"],
               "phases_not_yet_implemented": ["upload", "screening", "cloud_training", "partition",
                                              "deployment", "personalization"],
               "wall_seconds": round(sum(seconds.values()), 2), "phase_seconds": seconds,
               "edges": edges, "fid_extractor": extractor, "fid_samples": evaluated[0]["fid_count"],
               "fid_real_vs_real": rvr}
    write_json(rd.path("summary.json"), summary)
    return summary
