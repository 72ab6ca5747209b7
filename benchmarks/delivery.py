"""What does each edge get within its own download budget, and what does it cost?

    python benchmarks/delivery.py --run RUN_DIR [--run ...] [--budget 1.25] [--fid]

For each finished run (its layout with validation parts, the BAIM it partitioned, every
edge's upload under ``edges/edge-E/initial/``), :func:`baim.cloud.delivery.deliveries_from_run`
chooses every edge's download again, without rerunning the workflow (``--budget``: the
``--download-budget`` to use; default the run's, 1.25× the edge's own upload for runs made
before the setting). Per edge: the budget, the candidate chosen, its bytes, and its
validation and test loss against the edge's own upload's (test: the layout's test images of
the task, the training objective with seeded posterior noise, the cloud's β, the same for
every model), and against the lossless compact model of the task.

With ``--fid``: FID (domain extractor, ``fid_count`` of the preset, fitted-prior samples,
seed 0) of the delivered model and of the lossless model of its task, and per task the
lossless model's FID with its full-covariance prior against a diagonal and a diagonal +
rank-8 prior refitted to the same common images (same sampling, same count). The upload's
FID uses the prior the edge fits on its own images, as the edge's evaluation does.

Prints a table; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from baim.cloud import common_data
from baim.cloud.delivery import deliveries_from_run, with_prior
from baim.data import to_uint8
from baim.metrics import scores
from baim.models import fit_priors, generate, reconstruction_metrics
from baim.models.evaluation import learner_prior
from baim.runview import Run

PRIOR_FORMS = {"full": None, "diagonal": 0, "diagonal+rank8": 8}


def measure_run(root: Path, budget: str | None, with_fid: bool) -> dict[str, Any]:
    start = time.perf_counter()
    run = Run.open(root)
    layout, ds = run.layout, run.dataset()
    beta = layout.settings.cloud.kld_weight
    plan = deliveries_from_run(root, budget)
    choose_s = time.perf_counter() - start
    images, tasks = common_data(layout, ds)

    def loss(model, x) -> float:
        return reconstruction_metrics(model, x, 0, beta, seed=0)["test_loss"]

    tests = {name: ds.test.load(layout.test[name]) for name in layout.task_names}
    lossless = {name: run.compact(name) for name in layout.task_names}
    lossless_test = {name: loss(m, tests[name]) for name, m in lossless.items()}
    n = layout.settings.fid_count
    fid_sets = {name: layout.fid_sets(ds, name, n) for name in layout.task_names} if with_fid else {}
    lossless_fid: dict[str, dict[str, float]] = {}
    if with_fid:
        for t, name in enumerate(layout.task_names):
            real, base = fid_sets[name]
            fakes = {}
            for form, rank in PRIOR_FORMS.items():
                m = with_prior(lossless[name], rank) if rank is not None else lossless[name]
                if rank is not None:
                    fit_priors(m, images[tasks == t], np.zeros(int((tasks == t).sum()), dtype=np.int64))
                fakes[form] = to_uint8(generate(m, n, 0))
            lossless_fid[name] = {k: r.fid for k, r in scores(real, fakes, base, "domain").items()}
    rows = []
    for e, d in sorted(plan.items()):
        upload = run.edge_model(e, "initial")
        val = ds.train.load(layout.edges[e].val)
        row = d.record() | {
            "upload_test_loss": loss(upload, tests[d.task]),
            "test_loss": loss(d.model, tests[d.task]),
            "lossless_test_loss": lossless_test[d.task],
            "lossless_val_loss": loss(lossless[d.task], val),
            "lossless_bytes": (run.files.compact(d.task) / "weights.safetensors").stat().st_size,
        }
        if with_fid:
            real, base = fid_sets[d.task]
            prior = learner_prior(upload, ds.train.load(layout.edges[e].indices))  # type: ignore[arg-type]
            fakes = {
                "delivered": to_uint8(generate(d.model, n, 0)),
                "upload": to_uint8(generate(upload, n, 0, prior=prior)),
            }  # type: ignore[arg-type]
            got = scores(real, fakes, base, "domain")
            row |= {
                "fid": got["delivered"].fid,
                "upload_fid": got["upload"].fid,
                "lossless_fid": lossless_fid[d.task]["full"],
            }
        rows.append(row)
    return {
        "run": str(root),
        "seconds": round(time.perf_counter() - start, 1),
        "choose_seconds": round(choose_s, 1),
        "edges": rows,
        "lossless_fid_by_prior": lossless_fid,
    }


def _num(v: float | None) -> float:
    return float("nan") if v is None else v


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, action="append", help="a finished run directory (repeatable)")
    ap.add_argument("--budget", default=None, help="--download-budget to use (default: the run's)")
    ap.add_argument("--fid", action="store_true", help="also FID of delivered, lossless and upload models")
    args = ap.parse_args()
    runs = []
    for r in args.run:
        res = measure_run(Path(r), args.budget, args.fid)
        runs.append(res)
        print(f"\n{r}  ({res['seconds']} s, choosing {res['choose_seconds']} s)")
        head = ("edge", "task", "budget", "bytes", "candidate", "val", "up val", "test", "up test", "lossless")
        print("{:>4} {:<16} {:>10} {:>10} {:<10} {:>8} {:>8} {:>8} {:>8} {:>8}".format(*head))
        for row in res["edges"]:
            b = row["budget_bytes"]
            print(
                f"{row['edge']:>4} {row['task']:<16} {b if b is not None else '-':>10} {row['bytes']:>10} "
                f"{row['candidate']:<10} {_num(row['val_loss']):>8.5f} {_num(row['upload_val_loss']):>8.5f} "
                f"{row['test_loss']:>8.5f} {row['upload_test_loss']:>8.5f} {row['lossless_test_loss']:>8.5f}"
            )
    edges = [row for res in runs for row in res["edges"]]
    within = sum(1 for r in edges if r["within_budget"])
    not_worse = sum(1 for r in edges if r["test_loss"] <= r["upload_test_loss"])
    cost = [r["test_loss"] - r["lossless_test_loss"] for r in edges]
    out: dict[str, Any] = {
        "budget": args.budget,
        "edges": len(edges),
        "within_budget": within,
        "test_loss_not_worse_than_upload": not_worse,
        "share_not_worse": not_worse / max(len(edges), 1),
        "mean_test_loss_cost_vs_lossless": float(np.mean(cost)) if cost else None,
        "download_bytes": sum(r["bytes"] for r in edges),
        "lossless_download_bytes": sum(r["lossless_bytes"] for r in edges),
        "upload_bytes": sum(r["upload_bytes"] for r in edges),
        "candidates": {
            c: sum(1 for r in edges if r["candidate"] == c) for c in sorted({r["candidate"] for r in edges})
        },
        "runs": runs,
    }
    if args.fid:
        out["mean_fid_cost_vs_lossless"] = float(np.mean([r["fid"] - r["lossless_fid"] for r in edges]))
    print(
        f"\nwithin budget {within}/{len(edges)}; test loss ≤ upload's {not_worse}/{len(edges)}; "
        f"mean test-loss cost vs lossless {out['mean_test_loss_cost_vs_lossless']}"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
