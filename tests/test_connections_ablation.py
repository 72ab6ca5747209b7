"""benchmarks/connections_ablation.py --smoke: every cell a real ``baim run``, one JSON per
finished cell, a rerun skips finished cells, paired against the no-connections reference."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "connections_ablation.py"


def _run(out: Path) -> dict:
    env = dict(os.environ, BAIM_QUIET="1")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_smoke_ablation_runs_resumes_and_pairs(tmp_path):
    first = _run(tmp_path)
    rows = first["variants"]
    assert set(rows) == {"none", "cross-h1"}
    assert rows["none"]["seeds"] == [0] and rows["cross-h1"]["seeds"] == [0]
    assert rows["none"]["connections"] == [0]
    assert rows["cross-h1"]["connections"][0] > 0  # the smoke preset prunes half per epoch, not all
    paired = rows["cross-h1"]["test_loss"]["vs_none"]
    assert paired["seeds"] == [0]
    assert paired["mean"] == pytest.approx(rows["cross-h1"]["test_loss"]["mean"] - rows["none"]["test_loss"]["mean"])
    cells = sorted(p.name for p in (tmp_path / "cells").iterdir())
    assert cells == ["cross-h1-seed-0.json", "none-seed-0.json"]
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cells").iterdir()}
    again = _run(tmp_path)  # finished cells are read, not rerun
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cells").iterdir()} == stamps


def test_paired_bootstrap_interval():
    import importlib.util

    spec = importlib.util.spec_from_file_location("connections_ablation", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    lo, hi = mod.bootstrap([0.01, 0.02, 0.03, 0.04])
    assert 0.01 <= lo < 0.025 < hi <= 0.04
    assert mod.bootstrap([0.5]) is None  # one seed: no interval
    lo, hi = mod.bootstrap([-0.02, 0.03, -0.01, 0.02])
    assert lo < 0 < hi  # differences of both signs: the interval covers 0


def test_only_runs_the_chosen_variants_and_their_own_references():
    import importlib.util

    spec = importlib.util.spec_from_file_location("connections_ablation", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    plan = mod.cells([10], "trousers_bags", 8, ["fs10-cross-h3"])
    assert list(plan) == ["fs10-none", "fs10-cross-h3"]  # not the plain "none" reference
    assert plan["fs10-cross-h3"][0]["projection_rank"] == 8 and "projection_rank" not in plan["fs10-none"][0]
    assert set(mod.cells([10], "trousers_bags", 0, ["own-h3", "fs10-own-h3"])) == {
        "none",
        "own-h3",
        "fs10-none",
        "fs10-own-h3",
    }
