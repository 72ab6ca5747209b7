"""Do projection connections pay for what they cost? An ablation over seeds, few-shot included.

    python benchmarks/connections_ablation.py --out /work/runs-ablation/quick [--seeds 0,1,2] [--rank 8]
    python benchmarks/connections_ablation.py --smoke --out /tmp/ablation-smoke     # about a minute
    python benchmarks/connections_ablation.py --out DIR --report                   # table of finished cells

Every cell is one ``baim run`` (this process, ``--strategies finetune``) of the preset with
preset overrides, so it is the workflow itself: edges, screening, fusion, cloud training with
the preset's pruning, partition, evaluation. Variants (``VARIANTS``):

- ``none``: no projection connections (the reference every interval is paired against);
- ``own-h3``: candidates only within each squad, h = 3;
- ``cross-h1`` / ``cross-h3``: every candidate at h = 1 / h = 3, the paper's pruning
  (10 % every 10 epochs; with fewer cloud epochs than 10 it never fires, so these are the
  unpruned models, and the table says how many connections survived);
- ``cross-h3-aggressive``: h = 3 with the presets' aggressive pruning (half every epoch);
- ``cross-h3-gentle``: the same rate, but each chosen connection's α is annealed to 0 over the
  next epoch and only then removed (``prune_anneal``);
- ``none-long``: no connections and twice the cloud epochs (6): the control for whether a
  connection variant's gain is only its extra cloud compute;
- ``fsN-none`` / ``fsN-own-h3`` / ``fsN-cross-h3``: the same, with ``--few-shot-task`` cut to N
  cloud images (N in ``--shots``), paired against ``fsN-none``.

Connection variants use the projection ``--rank`` (0: the exact 1×1 projection). Per cell:
per-task test loss (the objective: pixel-mean MSE + β·KL on the task's test images), FID
with fitted priors (the workflow computes it anyway), each task's lossless compact-model
bytes, cloud training seconds, surviving connections. Each finished cell is one JSON file
(``DIR/cells/LABEL-seed-S.json``, written atomically), so a rerun skips finished cells and the
runs themselves resume (``DIR/runs/seed-S/LABEL``). Cells go variant by variant (``ORDER``,
references first), each over all seeds, so that paired comparisons accumulate early. The
table: mean per variant and, against its reference, the mean paired difference with a 95 %
bootstrap interval over seeds. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("BAIM_QUIET", "1")

from baim.atomic import write_json  # noqa: E402
from baim.config import RunConfig  # noqa: E402
from baim.errors import BaimError, RunConfigMismatch, RunDirBusy  # noqa: E402
from baim.models.io import MANIFEST  # noqa: E402
from baim.runfiles import RunFiles  # noqa: E402
from baim.transport import ByteLedger, InProcessTransport  # noqa: E402
from baim.workflow import Workflow, edge_nodes, prepare  # noqa: E402

PAPER = {"prune_interval": 10, "prune_ratio": 0.1}
AGGRESSIVE = {"prune_interval": 1, "prune_ratio": 0.5}
CROSS = {"cross_task_connections": True}  # explicit: the quick preset has none by default
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {"connections": False},
    "own-h3": {"height": 3, "cross_task_connections": False, **PAPER},
    "cross-h1": {"height": 1, **CROSS, **PAPER},
    "cross-h3": {"height": 3, **CROSS, **PAPER},
    "cross-h3-aggressive": {"height": 3, **CROSS, **AGGRESSIVE},
    "cross-h3-gentle": {"height": 3, **CROSS, **AGGRESSIVE, "prune_anneal": True},
    # the cheaper explanation of a connection's gain: no connections, but twice the cloud epochs
    # (cross-task h = 3 costs 1.4x (full data) to 1.8x (few-shot) the cloud seconds of none)
    "none-long": {"connections": False, "cloud": {"epochs": 6}},
}
FEW_SHOT_VARIANTS = ("none", "own-h3", "cross-h3", "none-long")
# what to run first when the machine's time is short: the headline pairs, then the schedules
ORDER = ("none", "cross-h3", "fs10-none", "fs10-cross-h3", "cross-h3-gentle", "cross-h3-aggressive", "own-h3")
ORDER += ("fs10-own-h3", "cross-h1", "fs50-none", "fs50-cross-h3", "fs50-own-h3", "fs10-none-long", "none-long")
METRICS = ("test_loss", "fid_fitted", "compact_bytes")


def cells(shots: list[int], task: str, rank: int, only: list[str] | None) -> dict[str, tuple[dict, str]]:
    """Label → (preset overrides, label of its paired reference)."""
    out: dict[str, tuple[dict, str]] = {}
    for label, ov in VARIANTS.items():
        out[label] = (ov, "none")
    for n in shots:
        for label in FEW_SHOT_VARIANTS:
            out[f"fs{n}-{label}"] = ({**VARIANTS[label], "few_shot": {task: n}}, f"fs{n}-none")
    for label, (ov, ref) in out.items():
        if ov.get("connections", True) and rank:
            out[label] = ({**ov, "projection_rank": rank}, ref)
    out = dict(sorted(out.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER)))
    if only:
        unknown = sorted(set(only) - set(out))
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; choose from {sorted(out)}")
        refs = {out[k][1] for k in only}
        out = {k: v for k, v in out.items() if k in only or k in refs}
    return out


def figures(run_dir: Path, summary: dict) -> dict[str, Any]:
    """One finished run's numbers for the table."""
    result = summary["strategies"]["finetune"]
    per_task = result["per_task"]
    cfg = json.loads((RunFiles(run_dir).baim("finetune") / MANIFEST).read_text())["config"]
    owner = cfg["learner_tasks"]
    into = {name: 0 for name in cfg["task_names"]}
    cross = 0
    for c in cfg["connections"]:
        into[cfg["task_names"][owner[c["dst"]]]] += 1
        cross += owner[c["src"]] != owner[c["dst"]]
    return {
        "test_loss": {t: m["test_loss"] for t, m in per_task.items()},
        "fid_fitted": {t: m["fid_fitted"] for t, m in per_task.items()},
        "compact_bytes": {t: v["bytes"] for t, v in summary["partition"]["tasks"].items()},
        "connections": result["connections"],
        "cross_task_connections": cross,
        "connections_into_task": into,
        "candidates": result["candidates"],
        "cloud_train_seconds": round(sum(r["seconds"] for r in result["curve"]), 2),
        "cloud_phase_seconds": summary["phase_seconds"].get("cloud_finetune"),
        "parameters": result["parameters"],
        "wall_seconds": summary["wall_seconds"],
    }


# What a cell measures is the BAIM and its lossless compact models; what edges are sent and how
# their models score is another question (the study's), so the edges get the lossless models
# (no per-edge delivery to choose) and their models are not evaluated. Cells made before this
# (2026-12-06) ran both; their BAIM numbers are the same, they only took longer.
LEAN = {"download_budget": "none"}


def run_lean(run_dir: Path, cfg: RunConfig) -> dict:
    """The workflow in process, without the edges' evaluation (``evaluated=()``)."""
    rd, layout, ds, _ = prepare(run_dir, cfg)
    ledger = ByteLedger()
    nodes = edge_nodes(rd, layout, ds, cfg.seed)
    return Workflow(rd, layout, ds, InProcessTransport(nodes, ledger), ledger, cfg, evaluated=()).run()


def run_cells(out: Path, preset: str, seeds: list[int], plan: dict[str, tuple[dict, str]]) -> None:
    for label, (overrides, _) in plan.items():
        for seed in seeds:
            cell = out / "cells" / f"{label}-seed-{seed}.json"
            if cell.is_file():
                continue
            cfg = RunConfig(preset=preset, seed=seed, strategies=("finetune",), overrides=overrides | LEAN)
            run_dir = out / "runs" / f"seed-{seed}" / label
            print(f"[{time.strftime('%H:%M:%S')}] seed {seed} {label} → {run_dir}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                summary = run_lean(run_dir, cfg)
                record: dict[str, Any] = {"ok": True, **figures(run_dir, summary)}
            except (RunConfigMismatch, RunDirBusy) as exc:  # this process cannot resume it: not the cell's result
                print(f"  skipped, not recorded: {exc}", file=sys.stderr)
                continue
            except BaimError as exc:  # e.g. screening quarantined a few-shot task's only upload
                record = {"ok": False, "error": str(exc)}
            record |= {"label": label, "seed": seed, "preset": preset, "overrides": overrides}
            write_json(cell, record)
            print(f"  {'done' if record['ok'] else 'failed'} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def bootstrap(diffs: list[float], draws: int = 10_000, seed: int = 0) -> tuple[float, float] | None:
    """95 % percentile interval of the mean of paired differences, resampling seeds (None
    for one seed: no interval)."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, len(d), size=(draws, len(d)))
    means = d[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def table(out: Path, plan: dict[str, tuple[dict, str]], task: str) -> dict[str, Any]:
    found: dict[str, dict[int, dict]] = {label: {} for label in plan}
    for f in sorted((out / "cells").glob("*.json")):
        rec = json.loads(f.read_text())
        if rec.get("label") in found:
            found[rec["label"]][rec["seed"]] = rec
    rows: dict[str, Any] = {}
    print(f"{'variant':22} {'seeds':>5} {'conns':>9} {'cloud s':>8} " + " ".join(f"{m:>34}" for m in METRICS))
    for label, (_, ref) in plan.items():
        ok = {s: r for s, r in found[label].items() if r["ok"]}
        failed = {s: r["error"] for s, r in found[label].items() if not r["ok"]}
        if not ok:
            rows[label] = {"seeds": [], "failed": failed}
            print(f"{label:22} {'-':>5}" + (f"  failed: {failed}" if failed else "  (not run yet)"))
            continue
        seeds = sorted(ok)
        # few-shot cells are judged on the few-shot task; the others on the mean over tasks
        scope = (lambda d: d[task]) if label.startswith("fs") else (lambda d: float(np.mean(list(d.values()))))
        row: dict[str, Any] = {
            "seeds": seeds,
            "failed": failed,
            "connections": [ok[s]["connections"] for s in seeds],
            "cross_task_connections": [ok[s]["cross_task_connections"] for s in seeds],
            "cloud_train_seconds": float(np.mean([ok[s]["cloud_train_seconds"] for s in seeds])),
        }
        cells_txt = []
        for m in METRICS:
            vals = [scope(ok[s][m]) for s in seeds]
            entry: dict[str, Any] = {"mean": float(np.mean(vals)), "per_seed": vals}
            paired = [s for s in seeds if found[ref].get(s, {}).get("ok")]
            txt = f"{entry['mean']:.5g}"
            if label != ref and paired:
                diffs = [scope(ok[s][m]) - scope(found[ref][s][m]) for s in paired]
                ci = bootstrap(diffs)
                entry["vs_" + ref] = {"mean": float(np.mean(diffs)), "ci95": ci and list(ci), "seeds": paired}
                txt += f" ({float(np.mean(diffs)):+.3g} " + (f"[{ci[0]:+.3g},{ci[1]:+.3g}])" if ci else "[1 seed])")
            row[m] = entry
            cells_txt.append(f"{txt:>34}")
        conns = ",".join(str(c) for c in row["connections"])
        print(f"{label:22} {len(seeds):>5} {conns:>9} {row['cloud_train_seconds']:>8.0f} " + " ".join(cells_txt))
        rows[label] = row
    print(
        f"metrics: mean over tasks ({task!r} alone for fs* rows); compact_bytes: lossless compact model; "
        "(Δ vs reference [95 % paired bootstrap over seeds]); conns: surviving connections per seed"
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder of the runs and finished cells (rerun to resume)")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rank", type=int, default=8, help="projection rank of the connection variants (0: exact)")
    ap.add_argument("--shots", default="10,50", help="cloud images of the few-shot task (empty: none)")
    ap.add_argument("--few-shot-task", default="trousers_bags")
    ap.add_argument("--only", default="", help="comma-separated variants to run (plus their references)")
    ap.add_argument("--report", action="store_true", help="only print the table of the cells finished so far")
    ap.add_argument("--smoke", action="store_true", help="the smoke preset, one seed, two variants")
    args = ap.parse_args()
    if args.smoke:
        args.preset, args.seeds, args.shots, args.only, args.rank = "smoke", "0", "", "cross-h1", 4
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    shots = [int(s) for s in args.shots.split(",") if s.strip()]
    only = [s.strip() for s in args.only.split(",") if s.strip()] or None
    plan = cells(shots, args.few_shot_task, args.rank, only)
    out = Path(args.out)
    if not args.report:
        run_cells(out, args.preset, seeds, plan)
    print(f"\npreset {args.preset}, seeds {seeds}, projection rank {args.rank or 'exact'}, out {out}")
    rows = table(out, plan, args.few_shot_task)
    print(json.dumps({"preset": args.preset, "rank": args.rank, "task": args.few_shot_task, "variants": rows}))


if __name__ == "__main__":
    main()
