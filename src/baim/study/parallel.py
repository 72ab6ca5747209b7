"""``baim study --jobs N``: the study's cells in N worker processes at once.

Why: the models of the ``quick`` preset are small, so one process training one of them at a
time leaves cores idle however many intra-op threads torch gets; independent cells in
separate processes (each with cores ÷ N threads) use them. Each worker is ``baim study``
itself, restricted to one unit of one seed and budget (``--worker``: no pairing, no report),
so a worker writes exactly the cells a sequential study would, atomically, and a killed
parallel study resumes like a sequential one. The parent writes ``study.json`` and the report
from the cells on disk after every unit.

A unit is the methods that must share a process or an order:

- baim, then the controls that reuse its uploads (``local``, ``broadcast``,
  ``broadcast_budget``, ``broadcast_keep``, ``ensemble_distill``: they read baim's workflow run, which must not be
  started twice at once);
- ``central`` and ``kd`` (they share the per-task teachers, trained once per process);
- ``fedavg`` and ``fedavg_ft`` (the fine-tuned variant starts from a copy of FedAvg's rounds);
- every other method alone.

Units go in the order of the seeds (so partial results still cover whole seeds first), within
a seed the converged budget first and then fixed budgets by epochs, most first, and within a
budget the longest unit first (``MINUTES``: what each method took in a converged quick
study), so that the last units to start are short ones and the workers finish close together
instead of one waiting on a long last unit (a simulation on the timed study's unit times:
about 2 minutes of 120 less than budgets in the order given). Memory is the
user's to budget: each worker holds its own model and data (about 6 GB at the quick preset's
peak).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .budget import Budget

AFTER_BAIM = ("local", "broadcast", "broadcast_budget", "broadcast_keep", "ensemble_distill")
TOGETHER = (("central", "kd"), ("fedavg", "fedavg_ft"))
# Minutes per cell, mean over seeds 0-2, of the timed converged quick study of 2026-12-07 (main
# at 4d824d5; study.md's cost table; kd without its teachers, fedavg_large at cap 30): only
# their order matters here.
MINUTES = {
    "baim": 10.3,
    "broadcast": 1.0,
    "broadcast_budget": 0.3,
    "broadcast_keep": 0.3,
    "ensemble_distill": 1.7,
    "central": 6.5,
    "kd": 8.7,
    "fedavg": 6.4,
    "fedavg_large": 16.0,
    "fedavg_ft": 0.6,
    "fd": 14.4,
    "sl": 9.7,
    "cloud_only": 1.3,
}


def units(methods: tuple[str, ...]) -> list[tuple[str, ...]]:
    """``methods`` split into units, the longest first (see the module's docstring)."""
    out: list[tuple[str, ...]] = []
    placed: set[str] = set()
    for m in methods:
        if m in placed:
            continue
        if m == "baim":
            unit: tuple[str, ...] = ("baim", *(x for x in methods if x in AFTER_BAIM))
        elif m in AFTER_BAIM and "baim" in methods:
            continue  # runs in baim's unit
        else:
            group = next((g for g in TOGETHER if m in g), (m,))
            unit = tuple(x for x in methods if x in group)
        out.append(unit)
        placed.update(unit)
    return sorted(out, key=lambda u: -sum(MINUTES.get(m, 0.0) for m in u))


def worker_command(
    out: Path,
    preset: str,
    seed: int,
    budget: Budget,
    unit: tuple[str, ...],
    data_dir: str | None,
    extractor: str,
    tuned: str | Path | None = None,
) -> list[str]:
    cmd = [sys.executable, "-m", "baim.cli", "study", "--worker", "--preset", preset, "--seeds", str(seed)]
    cmd += ["--budgets", budget.name, "--cap", str(budget.cap), "--patience", str(budget.patience)]
    cmd += ["--methods", ",".join(unit), "--fid-extractor", extractor, "--out", str(out)]
    cmd += ["--tuned", str(tuned)] if tuned else []
    return cmd + (["--data-dir", data_dir] if data_dir else [])


def run_parallel(
    out: Path,
    preset: str,
    todo: list[tuple[int, Budget, tuple[str, ...]]],
    jobs: int,
    data_dir: str | None,
    extractor: str,
    log: Any,
    after_each: Any,
    tuned: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Run ``todo`` (seed, budget, unit) in at most ``jobs`` workers; ``after_each()`` once a
    unit ends. Returns the units that failed, each with its log's tail and the log's path."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "BAIM_QUIET": "1"}
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(todo)
    running: dict[subprocess.Popen, tuple[int, Budget, tuple[str, ...], Path, float]] = {}
    failed: list[dict[str, Any]] = []
    log(f"{len(todo)} units in {jobs} workers, {threads} torch thread(s) each; worker logs in {logs}")

    def refill() -> None:
        while pending and len(running) < jobs:
            seed, budget, unit = pending.pop(0)
            path = logs / f"seed-{seed}-budget-{budget.name}-{'+'.join(unit)}.log"
            cmd = worker_command(out, preset, seed, budget, unit, data_dir, extractor, tuned)
            with path.open("ab") as sink:
                proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
            running[proc] = (seed, budget, unit, path, time.perf_counter())

    try:
        refill()
        while running:
            time.sleep(0.2)
            ended = [p for p in running if p.poll() is not None]
            for proc in ended:
                seed, budget, unit, path, t0 = running.pop(proc)
                what = f"seed {seed} budget {budget.name} {'+'.join(unit)}"
                if proc.returncode == 0:
                    log(f"{what}: done ({time.perf_counter() - t0:.0f} s; {len(pending)} units waiting)")
                else:
                    tail = path.read_text(errors="replace")[-2000:]
                    failed.append(
                        {"seed": seed, "budget": budget.name, "method": "+".join(unit), "error": tail, "log": str(path)}
                    )
                    log(f"{what}: FAILED (exit {proc.returncode}; {path})")
            if ended:
                # Start the next units before refreshing study.json: the refresh (pairing,
                # report, figures) takes seconds, and a core left idle that long after each of
                # 36 units cost the timed study minutes.
                refill()
                after_each()
    finally:
        for proc in running:  # interrupted: no orphans (their cells resume on the next run)
            proc.terminate()
        for proc in running:
            proc.wait()
    return failed
