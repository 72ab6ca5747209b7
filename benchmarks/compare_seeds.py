"""Aggregate several ``baim compare`` folders (one per seed, same preset) into mean ± std per
method, and count on how many seeds each method beats baim on quality.

Usage: python benchmarks/compare_seeds.py runs/compare-seed0 runs/compare-seed1 [...]
The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

KEYS = (
    "test_loss",
    "fid",
    "bytes_up",
    "bytes_down",
    "raw_data_bytes",
    "edge_cpu_s",
    "cloud_cpu_s",
    "edge_storage_bytes",
    "cloud_storage_bytes",
    "latency_ms",
    "wall_s",
)


def main(folders: list[str]) -> None:
    runs = [json.loads((Path(f) / "compare.json").read_text()) for f in folders]
    presets = {r["preset"] for r in runs}
    if len(presets) != 1 or len(runs) < 2:
        raise SystemExit(f"give at least two compare folders of one preset (got presets {sorted(presets)})")
    seeds = [r["seed"] for r in runs]
    by = [{m["method"]: m for m in r["methods"]} for r in runs]
    methods = [m for m in by[0] if all(m in b for b in by)]
    out: dict[str, dict] = {}
    for m in methods:
        out[m] = {}
        for k in KEYS:
            vals = [float(b[m][k]) for b in by]
            out[m][k] = {"mean": statistics.mean(vals), "std": statistics.stdev(vals), "values": vals}
        if m != "baim":
            out[m]["seeds_better_than_baim"] = {
                k: sum(b[m][k] < b["baim"][k] for b in by) for k in ("test_loss", "fid")
            }
    print(f"preset {presets.pop()}, seeds {seeds}: mean ± std over seeds (same layout seed as training seed)")
    head = f"{'method':8s} {'test loss':>20s} {'FID fitted':>18s} {'MB up+down':>12s}"
    print(head + f" {'better than baim (loss, FID)':>30s}")
    for m in methods:
        r = out[m]
        mb = (r["bytes_up"]["mean"] + r["bytes_down"]["mean"]) / 1e6
        better = r.get("seeds_better_than_baim", {})
        cell = f"{better.get('test_loss', '-')}/{len(runs)}, {better.get('fid', '-')}/{len(runs)}" if better else ""
        print(
            f"{m:8s} {r['test_loss']['mean']:.5f} ± {r['test_loss']['std']:.5f}"
            f" {r['fid']['mean']:8.1f} ± {r['fid']['std']:5.1f} {mb:12.1f} {cell:>30s}"
        )
    print(json.dumps({"seeds": seeds, "folders": folders, "methods": out}))


if __name__ == "__main__":
    main(sys.argv[1:])
