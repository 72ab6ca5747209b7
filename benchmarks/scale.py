"""Scale measured, not extrapolated: the whole workflow, in process, at N edges for each N.

    python benchmarks/scale.py --edges 10,30,100 [--out DIR] [--preset scale] [--download-budget B]

Each N runs in a subprocess of its own (so its peak resident memory is its own) into
``DIR/n-N`` with the ``scale`` preset (``--smoke``: the ``smoke`` preset, for the test). The
workflow resumes phase by phase, and what this benchmark meters is saved at the end of every
cloud phase, so a killed run loses at most the phase it was in; a finished N is read back, not
rerun. Per N it records: bytes per edge up (the upload phase) and down (deployment and
integrations), as the byte ledger counted the encoded messages; CPU seconds of the cloud and of
the edges per phase (``time.process_time``; the BAIM's FID evaluations booked apart as
``evaluation``); the BAIM's parameters, candidate and surviving connections; each task's compact
model (learners, connections, bytes); how each task's LSGate uses its squad on the cloud's common
data (counts, entropy in bits, effective number of learners = 2^entropy); what learner-level
pruning (:func:`baim.cloud.pruning.prune_learners`, threshold ``--prune-threshold``) removes
from the trained BAIM and from each compact model; peak RSS. Then
:func:`baim.compare.scaling.fit_measured` fits the scaling table's model to the measured points
and ``DIR/scale.png`` draws them beside the formula.

``--download-budget`` is handed to the run as the preset's ``download_budget`` where this baim's
preset has that setting; elsewhere it is reported as ignored.

The last line is one JSON object: ``download_per_edge``, ``cloud_seconds``, ``peak_rss_mb`` per N,
``ratio_100_10`` (download per edge at the largest N over the smallest; the goal at 100 / 10 is
≤ 1.2), and the rest of the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from baim.atomic import write_json
from baim.cloud import common_data
from baim.cloud import partition as cut
from baim.cloud.pruning import learner_usage, prune_learners
from baim.compare.measure import Meter
from baim.compare.scaling import fit_measured, scaling_figure
from baim.config import Preset, RunConfig
from baim.models import BAIM, load_model
from baim.runview import Run
from baim.transport import ByteLedger, InProcessTransport, encode
from baim.workflow import Workflow, deploy_message, edge_nodes, prepare

STRATEGY = "finetune"  # the deployed strategy; the other two are the paper's comparison
TRAINING = ("screening", "cloud_finetune", "partition", "deployment")  # the cloud's cost of reaching the edges
DOWN_PHASES = ("deployment",)  # plus every integration_k


def budget_supported() -> bool:
    return "download_budget" in {f.name for f in fields(Preset)}


def budget_value(text: str) -> Any:
    """``1.25`` (a factor) stays a number; ``2MB`` or ``none`` stay text, for the preset to check."""
    try:
        return float(text)
    except ValueError:
        return text


def run_config(n: int, args: argparse.Namespace) -> RunConfig:
    overrides: dict[str, Any] = {"num_edges": n}
    if args.smoke:  # the wiring only: fewer images everywhere
        overrides |= {"samples_per_edge": 128, "cloud_samples": 96, "test_per_task": 32, "fid_count": 8}
        overrides |= {"curve_test_per_task": 8}
    if args.download_budget is not None and budget_supported():
        overrides["download_budget"] = budget_value(args.download_budget)
    return RunConfig(
        preset=args.preset, seed=args.seed, data_dir=args.data_dir, strategies=(STRATEGY,), overrides=overrides
    )


class Progress:
    """What the meter and the ledger saw in each finished cloud phase, kept in ``progress.json``
    (a rerun of a phase replaces its entry, so a resumed run never counts a phase twice)."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"phases": {}, "rss_kb": 0}
        self.meter, self.ledger = Meter(), ByteLedger()

    def hook(self, side: str, phase: str) -> Any:
        if side == "cloud" and not self.meter._stack and phase != "evaluation":
            return self._phase(phase)
        return self.meter.side(side, phase)

    @contextmanager
    def _phase(self, phase: str) -> Iterator[None]:
        before = dict(self.meter.cpu)
        mark = len(self.ledger.messages)
        with self.meter.side("cloud", phase):
            yield
        cpu = {f"{s}/{p}": round(v - before.get((s, p), 0.0), 3) for (s, p), v in self.meter.cpu.items()}
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.data["phases"][phase] = {
            "cpu_s": {k: v for k, v in cpu.items() if v},
            "messages": self.ledger.messages[mark:],
            "peak_rss_mb_so_far": round(rss / 1024, 1),  # which phase raised the peak
        }
        self.data["rss_kb"] = max(self.data["rss_kb"], rss)
        write_json(self.path, self.data)

    def cpu(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for rec in self.data["phases"].values():
            for k, v in rec["cpu_s"].items():
                out[k] = round(out.get(k, 0.0) + v, 3)
        return out

    def messages(self) -> list[dict]:
        return [m for rec in self.data["phases"].values() for m in rec["messages"]]


def entropy_bits(counts: list[int]) -> float:
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c) if total else 0.0


def gate_and_pruning(run: Run, threshold: float) -> dict[str, Any]:
    """LSGate usage of the trained BAIM on the cloud's common data, and what learner pruning
    at ``threshold`` removes from it and from each task's compact model."""
    model = load_model(run.files.baim(STRATEGY), "baim")
    assert isinstance(model, BAIM)
    images, tasks = common_data(run.layout, run.dataset())
    usage = learner_usage(model, images, tasks)
    gates = {}
    for t, name in enumerate(run.layout.task_names):
        counts = [int(c) for c in usage[t]]
        h = entropy_bits(counts)
        total = sum(counts) or 1
        gates[name] = {
            "squad": len(counts),
            "entropy_bits": round(h, 3) + 0.0,  # no -0.0
            "max_entropy_bits": round(math.log2(len(counts)), 3) if counts else 0.0,
            "effective_learners": round(2**h, 2),
            "used_1pct": sum(1 for c in counts if c / total >= 0.01),
            "counts": counts,
        }
    before = model.num_parameters()
    compact_before = {n: len(encode(deploy_message(cut(model, t)))) for t, n in enumerate(run.layout.task_names)}
    dropped = prune_learners(model, usage, threshold)
    compact_after = {}
    for t, name in enumerate(run.layout.task_names):
        c = cut(model, t)
        compact_after[name] = {"bytes": len(encode(deploy_message(c))), "learners": len(c.learners)}
    return {
        "gates": gates,
        "pruning": {
            "threshold": threshold,
            "learners_dropped": len(dropped),
            "learners": len(model.learners),
            "baim_parameters": {"before": before, "after": model.num_parameters()},
            "compact_bytes_before": compact_before,
            "compact_after": compact_after,
        },
    }


def measure(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One N, in this process: run (or resume) the workflow metered, then read what it did."""
    out = Path(args.out) / f"n-{n}"
    cfg = run_config(n, args)
    rd, layout, ds, _ = prepare(out, cfg)
    progress = Progress(out / "progress.json")
    nodes = edge_nodes(rd, layout, ds, cfg.seed)
    wf = Workflow(
        rd,
        layout,
        ds,
        InProcessTransport(nodes, progress.ledger),
        progress.ledger,
        cfg,
        meter=progress.hook,
        evaluated=("personalized",),  # the edges' own uploads are scored by screening
    )
    t0 = time.perf_counter()
    wf.run()
    run = Run(out)
    edges = [e.edge for e in layout.edges]
    per_edge = {e: {"up": 0, "down": 0} for e in edges}
    for m in progress.messages():
        if m["phase"] == "upload" and m["direction"] == "up":
            per_edge[int(m["edge"])]["up"] += int(m["bytes"])
        if m["direction"] == "down" and (m["phase"] in DOWN_PHASES or m["phase"].startswith("integration")):
            per_edge[int(m["edge"])]["down"] += int(m["bytes"])
    cpu = progress.cpu()
    finetune, part = run.result(f"cloud_{STRATEGY}"), run.result("partition")
    analysis = gate_and_pruning(run, args.prune_threshold)
    return {
        "edges": n,
        "preset": args.preset,
        "download_budget": cfg.overrides.get("download_budget"),
        # the run's own download budget (the preset's, unless overridden): what the scaling model assumes
        "budgeted": budgeted(run),
        "edges_per_task": [sum(1 for e in layout.edges if e.task == t) for t in range(len(layout.tasks))],
        "upload_per_edge": sum(v["up"] for v in per_edge.values()) / n,
        "download_per_edge": sum(v["down"] for v in per_edge.values()) / n,
        "bytes_per_edge": {str(e): v for e, v in per_edge.items()},
        "cloud_seconds": round(sum(v for k, v in cpu.items() if k.split("/")[1] in TRAINING and k[:5] == "cloud"), 2),
        "cpu_s": cpu,
        "phase_wall_s": run.summary()["phase_seconds"],
        "wall_s_this_invocation": round(time.perf_counter() - t0, 1),
        "baim_parameters": part["baim_parameters"],
        "candidates": finetune["candidates"],
        "connections": finetune["connections"],
        "compact": part["tasks"],
        **analysis,
        "peak_rss_mb": round(
            max(progress.data["rss_kb"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024, 1
        ),
    }


def budgeted(run: Run) -> bool:
    """Whether the run's deliveries had a byte budget (what the scaling model assumes)."""
    deliveries = run.result("deployment").get("deliveries", {})
    return any(d.get("budget_bytes") is not None for d in deliveries.values())


def read_row(path: Path) -> dict[str, Any]:
    """A finished N's record; one written before records said whether the run was budgeted
    learns it from its run folder."""
    row = json.loads(path.read_text())
    if "budgeted" not in row:
        row["budgeted"] = budgeted(Run(path.parent))
    return row


def one(n: int, args: argparse.Namespace) -> Path:
    """Measure N in a subprocess (its peak RSS its own), unless a finished record exists."""
    path = Path(args.out) / f"n-{n}" / "scale.json"
    if path.is_file():
        return path
    cmd = [sys.executable, __file__, "--one", str(n), *child_args(args)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"N = {n}: {time.perf_counter() - started:.0f} s wall", flush=True)
    return path


def child_args(args: argparse.Namespace) -> list[str]:
    out = ["--out", args.out, "--preset", args.preset, "--seed", str(args.seed)]
    out += ["--prune-threshold", str(args.prune_threshold)] + (["--smoke"] if args.smoke else [])
    if args.data_dir:
        out += ["--data-dir", args.data_dir]
    if args.download_budget is not None:
        out += ["--download-budget", args.download_budget]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edges", default="10,30,100", help="comma-separated N")
    ap.add_argument("--out", default="/tmp/baim-scale", help="one run folder per N under it (resumable)")
    ap.add_argument("--preset", default="scale")
    ap.add_argument("--smoke", action="store_true", help="the smoke preset: checks the wiring, numbers mean nothing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--prune-threshold", type=float, default=0.01, help="learner pruning: least share of picks kept")
    ap.add_argument(
        "--download-budget", default=None, help="factor of the edge's upload, MB, or none (where supported)"
    )
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.preset = "smoke"
    if args.one is not None:
        write_json(Path(args.out) / f"n-{args.one}" / "scale.json", measure(args.one, args))
        return
    ns = sorted({int(x) for x in args.edges.split(",") if x.strip()})
    if not ns or ns[0] < 1:
        raise SystemExit(f"--edges takes positive edge counts separated by commas, got {args.edges!r}")
    if args.download_budget is not None and not budget_supported():
        print(f"--download-budget {args.download_budget} ignored: this baim's presets have no download_budget")
    rows = [read_row(one(n, args)) for n in ns]
    report(rows, Path(args.out))


def report(rows: list[dict], out: Path) -> None:
    print(
        f"{'N':>4} {'up/edge B':>10} {'down/edge B':>11} {'cloud s':>8} {'BAIM params':>11} {'cands':>6} "
        f"{'conns':>5} {'RSS MB':>7} {'gate H bits (eff.)':>28} {'pruned':>6}"
    )
    for r in rows:
        gates = " ".join(f"{g['entropy_bits']:.2f}({g['effective_learners']:.1f})" for g in r["gates"].values())
        print(
            f"{r['edges']:>4} {r['upload_per_edge']:>10.0f} {r['download_per_edge']:>11.0f} {r['cloud_seconds']:>8.1f} "
            f"{r['baim_parameters']:>11} {r['candidates']:>6} {r['connections']:>5} {r['peak_rss_mb']:>7.0f} "
            f"{gates:>28} {r['pruning']['learners_dropped']:>6}"
        )
    fit = fit_measured(rows)
    figure = scaling_figure(rows, fit, out / "scale.png")
    print(f"fit: {json.dumps(fit['formulas'])}")
    print(f"figure: {figure}")
    lo, hi = rows[0], rows[-1]
    key = lambda r: str(r["edges"])  # noqa: E731
    print(
        json.dumps(
            {
                "edges": [r["edges"] for r in rows],
                "download_per_edge": {key(r): round(r["download_per_edge"]) for r in rows},
                "upload_per_edge": {key(r): round(r["upload_per_edge"]) for r in rows},
                f"ratio_{hi['edges']}_{lo['edges']}": round(hi["download_per_edge"] / lo["download_per_edge"], 3),
                "ratio_100_10": round(hi["download_per_edge"] / lo["download_per_edge"], 3)
                if (lo["edges"], hi["edges"]) == (10, 100)
                else None,
                "cloud_seconds": {key(r): r["cloud_seconds"] for r in rows},
                "peak_rss_mb": {key(r): r["peak_rss_mb"] for r in rows},
                "baim_parameters": {key(r): r["baim_parameters"] for r in rows},
                "connections": {key(r): [r["candidates"], r["connections"]] for r in rows},
                "gate_entropy_bits": {key(r): {t: g["entropy_bits"] for t, g in r["gates"].items()} for r in rows},
                "learners_pruned": {key(r): r["pruning"]["learners_dropped"] for r in rows},
                "wall_s": {key(r): round(sum(r["phase_wall_s"].values()), 1) for r in rows},
                "download_budget": lo.get("download_budget"),
                "fit": fit["values"],
            }
        )
    )


if __name__ == "__main__":
    os.environ.setdefault("BAIM_QUIET", "1")
    main()
