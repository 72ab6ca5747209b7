"""What does a compact model cost when it must fit its edge's byte budget?

    python benchmarks/budget.py --run RUN_DIR [--factor 1.0]

For a finished run (``layout.json``, the BAIM the run partitioned under ``cloud/``, the edges'
uploads under ``edges/edge-E/initial/``), per task and per capability tier among that task's
edges (the first edge of each tier): budget = the bytes of that edge's own uploaded learner ×
``--factor``, and the budgeted compact model (:func:`baim.cloud.budget.partition_within_budget`,
LSGate usage measured on the cloud's common data) against the lossless one and the edge's own
upload: bytes, and test loss on the layout's test images of the task (the training objective
with seeded posterior noise, β of the cloud's recipe, the same for all three). Where nothing
fits the budget the row says so and gives the smallest size possible (one learner, no
connections). Test loss does not depend on the latent prior, so the prior refit that
``budgeted_from_run`` does after a lossy cut is left out here.

Prints a table; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baim.cloud import common_data, partition
from baim.cloud.budget import (
    compact_bytes,
    learner_usage,
    partition_within_budget,
    run_inputs,
    smallest_bytes,
)
from baim.errors import ConfigError
from baim.models import BAIM, load_model, reconstruction_metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a finished run directory")
    ap.add_argument("--factor", type=float, default=1.0, help="budget = factor × the edge's upload bytes")
    ap.add_argument("--seed", type=int, default=0, help="seed of the test loss's posterior noise")
    args = ap.parse_args()
    run = Path(args.run)
    layout, ds, baim = run_inputs(run)
    beta = layout.settings.cloud.kld_weight
    usage = learner_usage(baim, *common_data(layout, ds))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; run {run}, factor {args.factor}")
    print(
        f"{'task':14} {'tier':6} {'edge':>4} {'upload B':>10} {'budget B':>10} {'lossless B':>10} {'budgeted B':>10} "
        f"{'min B':>10} {'loss edge':>9} {'lossless':>9} {'budgeted':>9}  kept / dropped learners, dropped conns"
    )
    rows = []
    for t, name in enumerate(layout.task_names):
        test = ds.test.load(layout.test[name])
        lossless = partition(baim, t)
        lossless_loss = reconstruction_metrics(lossless, test, 0, beta, seed=args.seed)["test_loss"]
        minimum = smallest_bytes(baim, t)
        tiers: dict[str, int] = {}
        for e in layout.edges:
            if e.task == t:
                tiers.setdefault(e.tier, e.edge)
        for tier, edge in tiers.items():
            row = measure(run, baim, t, edge, args, usage, test, beta)
            row |= {"task": name, "tier": tier, "lossless_bytes": compact_bytes(lossless), "min_bytes": minimum}
            row |= {"test_loss_lossless": lossless_loss, "usage": usage[t].tolist()}
            rows.append(row)
            print_row(row)
    fitted = [r for r in rows if r["bytes"] is not None]
    summary = {
        "run": str(run),
        "factor": args.factor,
        "rows": rows,
        "fits": f"{len(fitted)}/{len(rows)}",
        "mean_loss_increase": (
            sum(r["test_loss_budgeted"] - r["test_loss_lossless"] for r in fitted) / len(fitted) if fitted else None
        ),
    }
    print(json.dumps(summary))


def measure(
    run: Path,
    baim: BAIM,
    task: int,
    edge: int,
    args: argparse.Namespace,
    usage: dict[int, torch.Tensor],
    test: np.ndarray,
    beta: float,
) -> dict[str, Any]:
    """One edge's row: its upload, its budget, and the budgeted compact model (or why none fits)."""
    folder = run / "edges" / f"edge-{edge}" / "initial"
    upload = (folder / "weights.safetensors").stat().st_size
    budget = int(upload * args.factor)
    own = load_model(folder, "learner")
    row: dict[str, Any] = {
        "edge": edge,
        "upload_bytes": upload,
        "budget_bytes": budget,
        "test_loss_edge": reconstruction_metrics(own, test, 0, beta, seed=args.seed)["test_loss"],
    }
    try:
        compact, report = partition_within_budget(baim, task, budget, usage)
    except ConfigError as exc:
        return row | {"bytes": None, "test_loss_budgeted": None, "error": str(exc)}
    loss = reconstruction_metrics(compact, test, 0, beta, seed=args.seed)["test_loss"]
    return (
        row
        | {"bytes": report["bytes"], "test_loss_budgeted": loss}
        | {k: report[k] for k in ("lossless", "kept_learners", "dropped_learners", "feeders", "dropped_connections")}
    )


def print_row(r: dict[str, Any]) -> None:
    what = (
        f"{r['kept_learners']} / {r['dropped_learners']}, {len(r['dropped_connections'])}"
        if r["bytes"] is not None
        else "nothing fits"
    )
    print(
        f"{r['task']:14} {r['tier']:6} {r['edge']:>4} {r['upload_bytes']:>10,} {r['budget_bytes']:>10,} "
        f"{r['lossless_bytes']:>10,} {_cell(r['bytes'], '10,')} {r['min_bytes']:>10,} "
        f"{r['test_loss_edge']:>9.5f} {r['test_loss_lossless']:>9.5f} {_cell(r['test_loss_budgeted'], '9.5f')}  {what}"
    )


def _cell(v: float | None, spec: str) -> str:
    """``v`` formatted to ``spec`` (width first), or a dash of that width."""
    return f"{v:>{spec}}" if v is not None else "-".rjust(int(spec.split(",")[0].split(".")[0]))


if __name__ == "__main__":
    main()
