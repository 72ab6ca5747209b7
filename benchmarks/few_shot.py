"""A few-shot task: how good is its deployed BAIM when the cloud holds only N of its images,
with and without connections from the other tasks' learners (the paper's claim that shared
knowledge helps)?

    python benchmarks/few_shot.py [--task trousers_bags] [--shots 10,50] [--seeds 0,1]

Per seed, runs the workflow (``baim run --preset quick --strategies finetune``, in this
process) on full data and, for each N, with the task cut to N cloud images, once with every
candidate connection and once with connections only inside squads (``--full-own`` adds the
full-data run without cross-task connections too). Edges and test sets are identical across
the runs of one seed; only the cloud's images of the task change. Reports for the task: the
deployed BAIM's test loss and FID (fitted prior) against the full-data run and against the
task's edges (their own initial models, and after personalisation), and how many connections
into the task's learners survived pruning. Run folders go under ``--out`` (rerun to resume).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from statistics import mean, stdev

os.environ.setdefault("BAIM_QUIET", "1")

from baim.config import RunConfig  # noqa: E402
from baim.engines import run  # noqa: E402
from baim.errors import BaimError  # noqa: E402
from baim.runfiles import RunFiles  # noqa: E402


def variants(task: str, shots: list[int], full_own: bool) -> dict[str, dict]:
    """Run label → preset overrides."""
    out: dict[str, dict] = {"full": {}}
    if full_own:
        out["full-own"] = {"cross_task_connections": False}
    for n in shots:
        out[f"n{n}-cross"] = {"few_shot": {task: n}}
        out[f"n{n}-own"] = {"few_shot": {task: n}, "cross_task_connections": False}
    return out


def connections_into(run_dir: Path, task: str) -> dict[str, int]:
    """Surviving connections of the trained BAIM that end in a learner of ``task``'s squad."""
    cfg = json.loads((RunFiles(run_dir).baim("finetune") / "manifest.json").read_text())["config"]
    t = cfg["task_names"].index(task)
    owner = cfg["learner_tasks"]
    into = [c for c in cfg["connections"] if owner[c["dst"]] == t]
    return {"into_task": len(into), "from_other_tasks": sum(owner[c["src"]] != t for c in into)}


def figures(run_dir: Path, summary: dict, task: str) -> dict:
    result = summary["strategies"]["finetune"]
    baim, step0 = result["per_task"][task], result["step0"][task]
    edges = [e for e in summary["edges"] if e["task"] == task]
    layout = json.loads(RunFiles(run_dir).layout.read_text())
    classes = set(next(t["classes"] for t in layout["tasks"] if t["name"] == task))
    labels = _train_labels(layout)
    return {
        "cloud_images": sum(int(labels[i]) in classes for i in layout["cloud"]),
        "baim": {"test_loss": baim["test_loss"], "fid_fitted": baim["fid_fitted"]},
        "step0": {"test_loss": step0["test_loss"], "fid_fitted": step0["fid_fitted"]},
        "edges": {
            which: {
                "test_loss": mean(e["models"][which]["test_loss"] for e in edges),
                "fid_fitted": mean(e["models"][which]["fid_fitted"] for e in edges),
            }
            for which in ("initial", "personalized")
        },
        "edge_ids": [e["edge"] for e in edges],
        "connections": connections_into(run_dir, task) | {"candidates": result["candidates"]},
        "quarantined_edges": [q["edge"] for q in summary.get("screening", {}).get("quarantined", [])],
        "fid_real_vs_real": baim["fid_real_vs_real"],
        "fid_count": baim["fid_count"],
        "wall_seconds": summary["wall_seconds"],
    }


_LABELS: dict[str, object] = {}


def _train_labels(layout: dict):
    key = f"{layout['dataset']}:{layout['data_dir']}"
    if key not in _LABELS:
        from baim.data import load_dataset

        _LABELS[key] = load_dataset(layout["dataset"], layout["data_dir"]).train.labels
    return _LABELS[key]


def _pm(xs: list[float], digits: int) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{mean(xs):.{digits}f}±{stdev(xs):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="trousers_bags")
    ap.add_argument("--shots", default="10,50", help="comma-separated cloud image counts of the few-shot task")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--full-own", action="store_true", help="also the full-data run without cross-task connections")
    ap.add_argument("--out", default="runs/few-shot")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    shots = [int(s) for s in args.shots.split(",") if s.strip()]
    runs = variants(args.task, shots, args.full_own)

    per: dict[str, dict[int, dict]] = {label: {} for label in runs}
    failed: dict[str, dict[int, str]] = {}
    for seed in seeds:
        for label, overrides in runs.items():
            cfg = RunConfig(preset=args.preset, seed=seed, strategies=("finetune",), overrides=overrides)
            run_dir = Path(args.out) / f"seed-{seed}" / label
            t0 = time.perf_counter()
            print(f"[{time.strftime('%H:%M:%S')}] seed {seed} {label} → {run_dir}", file=sys.stderr, flush=True)
            try:
                summary = run(run_dir, cfg)
            except BaimError as exc:  # e.g. screening quarantined the task's only upload
                failed.setdefault(label, {})[seed] = str(exc)
                print(f"  failed: {exc}", file=sys.stderr, flush=True)
                continue
            print(f"  done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            per[label][seed] = figures(run_dir, summary, args.task)

    full = per["full"]
    print(f"\ntask {args.task}, preset {args.preset}, seeds {seeds}; FID with fitted priors (domain extractor)")
    # (header, width, digits, value of one seed's figures r for seed s)
    columns = [
        ("BAIM loss", 15, 5, lambda s, r: r["baim"]["test_loss"]),
        ("BAIM FID", 12, 1, lambda s, r: r["baim"]["fid_fitted"]),
        ("Δloss v full", 16, 5, lambda s, r: r["baim"]["test_loss"] - full[s]["baim"]["test_loss"]),
        ("ΔFID v full", 12, 1, lambda s, r: r["baim"]["fid_fitted"] - full[s]["baim"]["fid_fitted"]),
        ("Δloss v edge", 16, 5, lambda s, r: r["baim"]["test_loss"] - r["edges"]["initial"]["test_loss"]),
        ("ΔFID v edge", 13, 1, lambda s, r: r["baim"]["fid_fitted"] - r["edges"]["initial"]["fid_fitted"]),
        ("pers. loss", 15, 5, lambda s, r: r["edges"]["personalized"]["test_loss"]),
        ("pers. FID", 13, 1, lambda s, r: r["edges"]["personalized"]["fid_fitted"]),
    ]
    head = f"{'run':11} {'cloud':>5} {'conn in/x':>11} " + " ".join(f"{h:>{w}}" for h, w, _, _ in columns)
    print(head)
    print("-" * len(head))
    for label, by_seed in per.items():
        ok = [s for s in seeds if s in by_seed and s in full]  # a delta needs both runs of a seed
        if not ok:
            print(f"{label:11} failed: {failed.get(label) or failed.get('full')}")
            continue
        conn = [by_seed[s]["connections"] for s in ok]
        conns = ",".join(f"{c['into_task']}/{c['from_other_tasks']}" for c in conn)  # per seed
        cells = [f"{_pm([f(s, by_seed[s]) for s in ok], d):>{w}}" for _, w, d, f in columns]
        note = f"  ({len(ok)} of {len(seeds)} seeds)" if len(ok) < len(seeds) else ""
        print(f"{label:11} {by_seed[ok[0]]['cloud_images']:>5} {conns:>11} " + " ".join(cells) + note)
    for label, by_seed in failed.items():
        for seed, why in by_seed.items():
            print(f"seed {seed} {label} failed: {why}")
    if not full:
        raise SystemExit("every full-data run failed; nothing to compare against")
    edge0 = [full[s]["edges"]["initial"] for s in full]
    print(
        f"{'edges alone':11} {'':>5} {'':>11} {_pm([e['test_loss'] for e in edge0], 5):>15} "
        f"{_pm([e['fid_fitted'] for e in edge0], 1):>12}   (the task's edges' own initial models, mean over "
        f"edges {next(iter(full.values()))['edge_ids']}; FID real vs real "
        f"{next(iter(full.values()))['fid_real_vs_real']:.1f})"
    )
    print("conn in/x: per seed, connections into the task's learners after pruning / of them from other tasks'")
    same_edges = all(
        r["edges"]["initial"] == full[s]["edges"]["initial"] for b in per.values() for s, r in b.items() if s in full
    )
    print(f"edges' initial models identical across the runs of each seed: {same_edges}")
    print(
        json.dumps(
            {
                "task": args.task,
                "preset": args.preset,
                "seeds": seeds,
                "shots": shots,
                "edges_identical_across_runs": same_edges,
                "runs": {label: {str(s): r for s, r in by_seed.items()} for label, by_seed in per.items()},
                "failed": {label: {str(s): why for s, why in b.items()} for label, b in failed.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
