"""Scale measured: the bounded fan-in of candidate connections, the scaling model fitted to
measured runs, and (integration) ``benchmarks/scale.py`` end to end on the smoke preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from baim.cloud.fusion import fuse, limit_sources
from baim.compare.scaling import compact_download, fit_measured
from baim.errors import ConfigError
from baim.learners import StagedVAE, tier_spec
from baim.models import candidate_connections
from baim.models.evaluation import reconstruction_metrics, rows_at_once
from baim.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]


def _fan_in(conns) -> dict[tuple[str, int], set[int]]:
    out: dict[tuple[str, int], set[int]] = {}
    for c in conns:
        out.setdefault((c.side, c.dst), set()).add(c.src)
    return out


def test_limit_sources_bounds_fan_in_and_keeps_whole_sources():
    n = 12
    every = candidate_connections([(3, 3)] * n, 0)
    kept = limit_sources(every, 3, seed=0)
    fan_in = _fan_in(kept)
    assert len(fan_in) == 2 * n and all(len(s) == 3 for s in fan_in.values())
    assert len(kept) == 2 * n * 3 * 3  # sides × targets × sources × stage pairs at h = 0
    assert len(every) == 2 * n * (n - 1) * 3
    # a kept source keeps every stage pair it had; the draw is seeded
    for c in every:
        if c.src in fan_in[(c.side, c.dst)]:
            assert c in kept
    assert kept == limit_sources(every, 3, seed=0) and kept != limit_sources(every, 3, seed=1)
    with pytest.raises(ConfigError, match="max_sources"):
        limit_sources(every, 0)


def test_fuse_with_max_sources_grows_linearly():
    sizes = {}
    for n in (6, 12):
        learners = [StagedVAE(tier_spec("small")) for _ in range(n)]
        model = fuse(learners, [i % 3 for i in range(n)], ["a", "b", "c"], height=0, max_sources=2)
        sizes[n] = len(model.connections)
        assert all(len(s) <= 2 for s in _fan_in(model.conn_keys.values()).values())
    assert sizes[12] == 2 * sizes[6]


def test_a_big_baims_evaluation_in_smaller_chunks_gives_the_same_numbers():
    torch.manual_seed(0)
    learners = [StagedVAE(tier_spec("small")) for _ in range(3)]
    model = fuse(learners, [0, 1, 2], ["a", "b", "c"], height=0)
    images = (torch.rand(100, 1, 32, 32) * 255).to(torch.uint8).numpy()
    whole = reconstruction_metrics(model, images, task=1, batch_size=500)
    chunked = reconstruction_metrics(model, images, task=1, batch_size=32)
    assert rows_at_once(model, 32) == 32 and rows_at_once(model, 500) == 500
    assert chunked == pytest.approx(whole, rel=1e-5)
    many = fuse(
        [StagedVAE(tier_spec("small")) for _ in range(100)],
        [i % 3 for i in range(100)],
        ["a", "b", "c"],
        connections=False,
    )
    assert rows_at_once(many, 500) == 32 and rows_at_once(learners[0], 500) == 500


def test_preset_rejects_a_negative_max_sources():
    with pytest.raises(ConfigError, match="max_sources"):
        get_preset("scale").with_overrides(max_sources=-1)
    assert get_preset("scale").max_sources > 0 and get_preset("quick").max_sources == 0


def _row(n: int, phi: float, b: float, c: float, m: int = 3) -> dict:
    per_task = [n // m] * m
    down = compact_download([float(x) for x in per_task], phi, b, c) / n
    learners = [round(nt + phi * (n - nt)) for nt in per_task]
    return {
        "edges": n,
        "edges_per_task": per_task,
        "upload_per_edge": b,
        "download_per_edge": down,
        "compact": {f"t{t}": {"learners": learners[t], "bytes": learners[t] * b + c} for t in range(m)},
        "cloud_seconds": 2.0 * n**1.5,
        "peak_rss_mb": 300 + 20 * n,
    }


def test_fit_measured_recovers_the_model_it_was_drawn_from():
    rows = [_row(n, phi=0.25, b=1000.0, c=5000.0) for n in (12, 36, 96)]
    fit = fit_measured(rows)
    v = fit["values"]
    assert v["phi"] == pytest.approx(0.25, rel=1e-3)
    assert v["download_c"] == pytest.approx(5000.0, rel=1e-3)
    assert v["cloud_exponent"] == pytest.approx(1.5, rel=1e-3)
    assert v["rss_mb_slope"] == pytest.approx(20.0, rel=1e-3)
    assert v["table_phi"] == pytest.approx(0.25, rel=1e-6)
    at_1000 = fit["by_edges"]["1000"]
    assert at_1000["download_per_edge"] == pytest.approx(5000 + 1000 * (1 / 3 + 0.25 * 2 / 3) * 1000, rel=1e-3)
    assert set(fit["measured"]) == {"12", "36", "96"}


def test_fit_measured_of_budgeted_runs_has_no_squad_share():
    """With a download budget an edge's download is bounded by its own upload: the table's
    model is ρ·b per edge, whatever N; φ is not defined."""
    rows = [_row(n, phi=0.25, b=1000.0, c=5000.0) | {"budgeted": True, "download_per_edge": 1010.0} for n in (10, 100)]
    fit = fit_measured(rows)
    v = fit["values"]
    assert v["phi"] is None and v["table_phi"] is None and v["table_rho"] == pytest.approx(1.01)
    assert fit["by_edges"]["10000"]["table_download_per_edge"] == pytest.approx(1010.0)
    assert fit["by_edges"]["10000"]["download_per_edge"] == pytest.approx(1010.0, rel=1e-6)
    assert v["download_exponent"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.integration
@pytest.mark.timeout(2400)  # about 4 CPU minutes; far longer on a shared machine
def test_scale_benchmark_smoke(tmp_path):
    env = os.environ | {"BAIM_QUIET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--edges", "3,4", "--smoke", "--out", str(tmp_path)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=2300)
    assert out.returncode == 0, out.stderr[-3000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(last["download_per_edge"]) == {"3", "4"}
    assert all(v > 0 for v in last["download_per_edge"].values())
    assert all(v > 0 for v in last["peak_rss_mb"].values())
    assert all(v > 0 for v in last["cloud_seconds"].values())
    assert last["ratio_4_3"] == pytest.approx(last["download_per_edge"]["4"] / last["download_per_edge"]["3"], rel=1e-2)
    assert last["ratio_100_10"] is None
    assert (tmp_path / "scale.png").stat().st_size > 0
    row = json.loads((tmp_path / "n-4" / "scale.json").read_text())
    assert sum(g["squad"] for g in row["gates"].values()) == 4
    # resumable: a second call reads the finished records back instead of rerunning
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1]) == last
