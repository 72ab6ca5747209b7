"""The lifecycle, measured: async against sync schedules, and a new task joining a trained BAIM.

1. ``baim run --schedule sync`` and ``--schedule async`` on the same preset, layout and seeds
   (finetune only): time to the first deployment on the timeline's clock (edges' training
   simulated from tier and data, the cloud's work measured), the final BAIM's mean test loss
   and FID (fitted prior, same extractor, count and seed on both sides), the personalised
   edges' mean test loss and FID, and the bytes sent down.
2. A new task joins the sync run of the first seed (``baim cloud add``): a folder of a user's
   images (Fashion-MNIST test images of one class, written as PNGs: a stand-in for a user's own
   folder) trains a small learner; it joins the BAIM as a new task with the old tasks frozen,
   and once more with them trained too. Reported: the new task's test loss in the BAIM and of
   its learner alone (same held-out images), and the old tasks' change.

Usage: python benchmarks/lifecycle.py [--preset quick] [--seeds 0,1] [--out runs/lifecycle]
The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs))


def schedule_row(summary: dict) -> dict:
    final = summary["lifecycle"]["final"]["per_task"]
    pers = [e["models"]["personalized"] for e in summary["edges"] if "personalized" in e["models"]]
    return {
        "first_deployment_s": summary["timeline"]["first_deployment_s"],
        "all_uploads_in_s": summary["timeline"]["all_uploads_in_s"],
        "baim_versions": summary["timeline"]["final_version"] + 1,
        "final_baim_test_loss": _mean([v["test_loss"] for v in final.values()]),
        "final_baim_fid": _mean([v["fid_fitted"] for v in final.values()]),
        "edges_test_loss": _mean([m["test_loss"] for m in pers]),
        "edges_fid": _mean([m["fid_fitted"] for m in pers]),
        "bytes_down": summary["bytes"]["download"],
        "wall_s": summary["wall_seconds"],
    }


def new_task(run_dir: Path, out: Path, seed: int) -> dict:
    from baim.cloud.add import add_to_run
    from baim.data import load_dataset
    from baim.data.image_folder import read_images
    from baim.edge import train_on_images
    from baim.models import load_model, reconstruction_metrics

    ds = load_dataset("fashion-mnist")
    folder = out / "user-bags"
    if not folder.is_dir():
        labels = np.asarray(ds.test.labels)
        idx = np.flatnonzero(labels == 8)[:600]  # class 8: bags
        folder.mkdir(parents=True)
        for i, img in zip(idx, ds.test.load(idx)):
            Image.fromarray(img[0]).save(folder / f"bag_{i:05d}.png")
    learner = out / "user-learner"
    if not (learner / "manifest.json").is_file():
        train_on_images(folder, learner, "small", 32, 1, epochs=4, seed=seed)
    rows = {}
    for train_old in (False, True):
        target = out / f"added-{'train-old' if train_old else 'frozen'}"
        if (target / "add.json").is_file():
            report = json.loads((target / "add.json").read_text())
        else:
            report = add_to_run(run_dir, learner, "user_bags", folder, train_old=train_old, out=target, seed=seed)
        rows["train_old" if train_old else "frozen"] = report
    # the learner alone on the same held-out images add_to_run measured the BAIM on
    own = read_images(folder, 32, 1)
    order = np.random.default_rng(seed).permutation(len(own))
    held = own[order[: max(1, int(round(0.2 * len(own))))]]
    alone = reconstruction_metrics(load_model(learner, "learner"), held)["test_loss"]
    out_rows = {}
    for k, r in rows.items():
        old = [t for t in r["test_loss_before"] if t != "user_bags"]
        out_rows[k] = {
            "new_task_test_loss_in_baim": r["test_loss_after"]["user_bags"],
            "old_tasks_test_loss_change": {t: r["test_loss_after"][t] - r["test_loss_before"][t] for t in old},
            "untouched_max_abs_diff": r["untouched_max_abs_diff"],
            "parameters_before": r["parameters_before"],
            "parameters_after": r["parameters_after"],
            "trained_parameters": r["trained_parameters"],
            "compact_bytes": r["compact_bytes"].get("user_bags"),
            "learner_bytes": r["learner_bytes"],
            "seconds": r["seconds"],
        }
    return {"learner_alone_test_loss": alone, "images": len(own), "held_out": len(held), **out_rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--staleness", type=int, default=0)
    ap.add_argument("--out", default="runs/lifecycle")
    args = ap.parse_args()
    from baim.config import RunConfig
    from baim.engines import run

    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    rows: dict[str, list[dict]] = {"sync": [], "async": []}
    for seed in seeds:
        for sched in ("sync", "async"):
            cfg = RunConfig(
                preset=args.preset,
                seed=seed,
                strategies=("finetune",),
                schedule=sched,
                staleness=args.staleness if sched == "async" else 0,
            )
            summary = run(out / f"{sched}-seed{seed}", cfg)
            rows[sched].append(schedule_row(summary) | {"seed": seed})
            print(f"{sched} seed {seed}: {json.dumps(rows[sched][-1])}", file=sys.stderr)
    print(f"{'':24s}" + "".join(f"{s:>24s}" for s in rows))
    agg: dict[str, dict] = {}
    for key in rows["sync"][0]:
        if key == "seed":
            continue
        cells = []
        for sched, rs in rows.items():
            vals = [r[key] for r in rs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            agg.setdefault(sched, {})[key] = {"mean": _mean(vals), "std": sd, "values": vals}
            cells.append(f"{_mean(vals):14.4g} ± {sd:<7.3g}")
        print(f"{key:24s}" + "".join(f"{c:>24s}" for c in cells))
    joined = new_task(out / f"sync-seed{seeds[0]}", out / "new-task", seeds[0])
    print(json.dumps(joined, indent=1), file=sys.stderr)
    print(
        json.dumps(
            {
                "preset": args.preset,
                "seeds": seeds,
                "staleness": args.staleness,
                "schedules": agg,
                "per_seed": rows,
                "new_task": joined,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
