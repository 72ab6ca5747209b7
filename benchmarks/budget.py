"""What does a compact model cost when it must fit its edge's byte budget?

    python benchmarks/budget.py --run RUN_DIR [--select loss|usage] [--factor 1.0 1.25 1.5]

For a finished run (``layout.json``, the BAIM the run partitioned under ``cloud/``, the edges'
uploads under ``edges/edge-E/initial/``), per task, per capability tier among that task's
edges (the first edge of each tier) and per factor: budget = the bytes of that edge's own
uploaded learner × factor, and the budgeted compact model
(:func:`baim.cloud.budget.partition_within_budget` with ``--select``: greedy by loss on at most
256 of the cloud's common images of the task, or by LSGate usage on the cloud's common data)
against the lossless one and the edge's own upload: bytes, and test loss on the layout's test
images of the task (the training objective with seeded posterior noise, β of the cloud's
recipe, the same for all three). Where nothing fits the budget the row says so and gives the
smallest size possible (one learner, no connections). Test loss does not depend on the latent
prior, so the prior refit that ``budgeted_from_run`` does after a lossy cut is left out here.
Each row also gives the seconds its budgeted partition took.

Prints a table; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baim.cloud import common_data
from baim.cloud.budget import (
    SELECTIONS,
    compact_bytes,
    learner_usage,
    lossless_compact,
    partition_within_budget,
    run_inputs,
    selection_images,
    smallest_bytes,
)
from baim.errors import ConfigError
from baim.learners import StagedVAE
from baim.models import BAIM, load_model, reconstruction_metrics
from baim.runfiles import RunFiles


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a finished run directory")
    ap.add_argument("--select", default="loss", choices=SELECTIONS, help="how a lossy cut chooses what stays")
    ap.add_argument(
        "--factor", type=float, nargs="+", default=[1.0, 1.25, 1.5], help="budget = factor × the edge's upload bytes"
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the test loss's posterior noise")
    args = ap.parse_args()
    run = Path(args.run)
    layout, ds, baim = run_inputs(run)
    beta = layout.settings.cloud.kld_weight
    images, tasks = common_data(layout, ds)
    usage = learner_usage(baim, images, tasks)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; run {run}, select {args.select}, "
        f"factors {args.factor}"
    )
    print(
        f"{'task':14} {'tier':6} {'edge':>4} {'factor':>6} {'upload B':>10} {'budget B':>10} {'lossless B':>10} "
        f"{'budgeted B':>10} {'min B':>10} {'loss edge':>9} {'lossless':>9} {'budgeted':>9} {'s':>5}  "
        "kept / dropped learners, kept / dropped conns"
    )
    rows: list[dict[str, Any]] = []
    for t, name in enumerate(layout.task_names):
        test = ds.test.load(layout.test[name])
        own = selection_images(images[tasks == t])
        lossless_model = lossless_compact(baim, t)
        task_row: dict[str, Any] = {
            "task": name,
            "lossless_bytes": compact_bytes(lossless_model),
            "min_bytes": smallest_bytes(baim, t),
            "test_loss_lossless": test_loss(lossless_model, test, beta, args.seed),
            "usage": usage[t].tolist(),
        }
        tiers: dict[str, int] = {}
        for e in layout.edges:
            if e.task == t:
                tiers.setdefault(e.tier, e.edge)
        for tier, edge in tiers.items():
            folder = RunFiles(run).edge(edge, "initial")
            upload = (folder / "weights.safetensors").stat().st_size
            edge_loss = test_loss(load_model(folder, "learner"), test, beta, args.seed)
            for factor in args.factor:
                row = task_row | {"tier": tier, "edge": edge, "factor": factor, "upload_bytes": upload}
                row |= {"budget_bytes": int(upload * factor), "test_loss_edge": edge_loss}
                row |= measure(baim, t, row["budget_bytes"], args, usage, own, test, beta)
                rows.append(row)
                print_row(row)
    summary: dict[str, Any] = {"run": str(run), "select": args.select, "factors": args.factor, "rows": rows}
    for factor in args.factor:
        fitted = [r for r in rows if r["factor"] == factor and r["bytes"] is not None]
        summary[f"factor {factor}"] = {
            "fits": f"{len(fitted)}/{sum(r['factor'] == factor for r in rows)}",
            "mean_loss_increase": (
                sum(r["test_loss_budgeted"] - r["test_loss_lossless"] for r in fitted) / len(fitted) if fitted else None
            ),
            "beats_edge": sum(r["test_loss_budgeted"] < r["test_loss_edge"] for r in fitted),
        }
    print(json.dumps(summary))


@torch.no_grad()
def test_loss(model: StagedVAE | BAIM, test: np.ndarray, beta: float, seed: int) -> float:
    return reconstruction_metrics(model, test, 0, beta, seed=seed)["test_loss"]


def measure(
    baim: BAIM,
    task: int,
    budget: int,
    args: argparse.Namespace,
    usage: dict[int, torch.Tensor],
    own: np.ndarray,
    test: np.ndarray,
    beta: float,
) -> dict[str, Any]:
    """The budgeted compact model's figures (or why none fits)."""
    start = time.perf_counter()
    try:
        compact, report = partition_within_budget(
            baim, task, budget, select=args.select, images=own, usage=usage, kld_weight=beta
        )
    except ConfigError as exc:
        return {"bytes": None, "test_loss_budgeted": None, "seconds": time.perf_counter() - start, "error": str(exc)}
    seconds = time.perf_counter() - start
    keys = ("lossless", "kept_learners", "dropped_learners", "feeders", "kept_connections", "dropped_connections")
    return (
        {"bytes": report["bytes"], "test_loss_budgeted": test_loss(compact, test, beta, args.seed)}
        | {"seconds": seconds, "selection": report.get("selection")}
        | {k: report[k] for k in keys}
    )


def print_row(r: dict[str, Any]) -> None:
    conns = f"{len(r['kept_connections'])} / {len(r['dropped_connections'])}" if r["bytes"] is not None else ""
    what = f"{r['kept_learners']} / {r['dropped_learners']}, {conns}" if r["bytes"] is not None else "nothing fits"
    print(
        f"{r['task']:14} {r['tier']:6} {r['edge']:>4} {r['factor']:>6.2f} {r['upload_bytes']:>10,} "
        f"{r['budget_bytes']:>10,} {r['lossless_bytes']:>10,} {_cell(r['bytes'], '10,')} {r['min_bytes']:>10,} "
        f"{r['test_loss_edge']:>9.5f} {r['test_loss_lossless']:>9.5f} {_cell(r['test_loss_budgeted'], '9.5f')} "
        f"{r['seconds']:>5.1f}  {what}"
    )


def _cell(v: float | None, spec: str) -> str:
    """``v`` formatted to ``spec`` (width first), or a dash of that width."""
    return f"{v:>{spec}}" if v is not None else "-".rjust(int(spec.split(",")[0].split(".")[0]))


if __name__ == "__main__":
    main()
