"""Toward internet scale, on paper from measurements: each method's measured per-edge and
per-round costs extrapolated to N edges, with the formula said next to every number; one
real run with many edges that checks the extrapolation at one point; and the same model fitted
to several real runs (``benchmarks/scale.py``), drawn beside the measured points.

Assumptions (stated in the output): edges work in parallel; the cloud is one machine of the
measuring machine's speed; every edge has a 100 Mbit/s link and the cloud a 10 Gbit/s one;
tasks keep the measured run's number M, and an N-edge federation puts N/M edges on each task.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..figures import pyplot, save_figure
from ..runview import Run
from ..transport import encode
from ..workflow import deploy_message
from ..workflow.results import Deployment, Partition, Upload

EDGE_BPS = 100e6 / 8  # bytes per second of one edge's link
CLOUD_BPS = 10e9 / 8
SCALES = (10, 100, 1000, 10_000)
ASSUMPTIONS = (
    "edges work in parallel; the cloud is one machine as fast as the measuring one (its CPU seconds are its "
    "time); links: 100 Mbit/s per edge, 10 Gbit/s at the cloud; M tasks as measured, N/M edges per task; "
    "time to a deployed model = edge compute per edge + per-edge bytes / edge link + all bytes / cloud link + "
    "cloud compute (a serial sum: an upper estimate)"
)


def _num(x: float) -> float:
    return float(f"{x:.4g}")


def inputs(row: dict, n0: int) -> dict[str, float]:
    """Per-edge (and per-round) quantities of one measured method."""
    R = len(row.get("rounds") or []) or 1
    return {
        "up_e": row["bytes_up"] / n0,
        "down_e": row["bytes_down"] / n0,
        "raw_e": row["raw_data_bytes"] / n0,
        "edge_s": row["edge_cpu_s"] / n0,
        "cloud_s": row["cloud_cpu_s"],
        "cloud_store": row["cloud_storage_bytes"],
        "rounds": R,
    }


BUDGETED_DOWNLOAD = (
    "N·u·ρ: each edge downloads a model within its own budget (a factor of its own upload's bytes), so the "
    "download grows with N; ρ = measured bytes down per byte up"
)


def compact_model(compact: dict[str, dict], per_task_edges: list[int], n0: int, b: float) -> tuple[float, float]:
    """From a measured run: φ, the fraction of the other tasks' learners a compact model keeps as
    feeders (their stages feed its squad through connections), and c, a compact model's bytes
    besides its learners (gates, priors, projections), with b bytes per learner. Both are
    weighted by how many edges download each task's model, so that :func:`compact_download`
    reproduces the measured download exactly when tasks have different numbers of edges."""
    feeders = others = extra = 0.0
    for (_, v), n_t in zip(compact.items(), per_task_edges):
        feeders += n_t * (v["learners"] - n_t)
        others += n_t * (n0 - n_t)
        extra += n_t * (v["bytes"] - v["learners"] * b)
    downloads = sum(per_task_edges)
    return (feeders / others if others else 0.0), (extra / downloads if downloads else 0.0)


def compact_download(n_per_task: list[float], phi: float, b: float, c: float) -> float:
    """Σ_t n_t · (L_t·b + c) with L_t = n_t + φ·(N − n_t) learners in task t's compact model."""
    n = sum(n_per_task)
    return sum(nt * ((nt + phi * (n - nt)) * b + c) for nt in n_per_task)


def predict(
    row: dict,
    n0: int,
    m_tasks: int,
    n: int,
    measured_per_task: list[int],
    per_task: list[int] | None = None,
) -> dict[str, Any]:
    """One method's cloud bytes in/out, cloud compute, cloud storage and time at ``n`` edges
    (``measured_per_task``: edges per task in the measured run; ``per_task``: at ``n``, default
    N/M each)."""
    q = inputs(row, n0)
    k = n / n0
    method = row["method"]
    shares: list[float] = [float(x) for x in per_task] if per_task else [n / m_tasks] * m_tasks
    if method == "local":
        p = {"in": 0.0, "out": 0.0, "cloud_s": 0.0, "store": 0.0}
        f = {"in": "0", "out": "0", "cloud_s": "0", "store": "0"}
    elif method == "baim":
        b = q["up_e"]
        si = row["scaling_inputs"]
        compact = si.get("compact") or {
            t: {"bytes": si["compact_bytes"][t], "learners": si["compact_learners"][t]} for t in si["compact_bytes"]
        }
        phi, c = compact_model(compact, measured_per_task, n0, b)
        budgeted = bool(si.get("budgeted"))
        rho = row["bytes_down"] / row["bytes_up"] if budgeted and row["bytes_up"] else 0.0
        out = n * b * rho if budgeted else compact_download(shares, phi, b, c)
        p = {"in": n * q["up_e"], "out": out, "cloud_s": q["cloud_s"] * k, "store": q["cloud_store"] * k}
        f = {
            "in": "N·u (u: one upload)",
            "out": BUDGETED_DOWNLOAD
            if budgeted
            else "Σ_t n_t·(L_t·b + c), L_t = n_t + φ·(N − n_t): each edge downloads its task's compact "
            "model, which holds its squad's n_t learners, a fraction φ of the other learners as feeders (b bytes "
            "per learner; φ and c measured) and c bytes of gates, priors and projections; ∝ N² when φ > 0",
            "cloud_s": "C0·N/N0 (screening and BAIM training grow with the number of learners)",
            "store": "S0·N/N0 (uploads, the BAIM, the compact models)",
        }
        p["b"], p["c"], p["phi"] = b, c, phi
        if budgeted:
            p["rho"] = rho
    elif method == "central":
        p = {"in": n * q["up_e"], "out": n * q["down_e"], "cloud_s": q["cloud_s"] * k, "store": q["cloud_store"] * k}
        f = {
            "in": "N·r (r: one edge's raw slice, encoded)",
            "out": "0 until served (one round trip per generation)",
            "cloud_s": "C0·N/N0 (training epochs over pooled data ∝ N)",
            "store": "S0·N/N0 (raw images ∝ N)",
        }
    elif method == "kd":
        meter = row.get("meter", {})
        teacher = sum(v["cpu_s"] for key, v in meter.items() if key in ("cloud/teacher", "cloud/upload"))
        distill = sum(v["cpu_s"] for key, v in meter.items() if key == "cloud/distill")
        p = {
            "in": n * q["up_e"],
            "out": n * q["down_e"],
            "cloud_s": teacher * k + distill * k * k,
            "store": q["cloud_store"] * k,
        }
        f = {
            "in": "N·r",
            "out": "N·s (s: one student)",
            "cloud_s": "T0·N/N0 + D0·(N/N0)² (teachers on pooled data ∝ N; N students, each distilled on its "
            "task's pooled data ∝ N/M)",
            "store": "S0·N/N0",
        }
    elif method in ("fedavg", "fd"):
        p = {"in": n * q["up_e"], "out": n * q["down_e"], "cloud_s": q["cloud_s"] * k, "store": q["cloud_store"]}
        f = {
            "in": f"N·R·w (R = {q['rounds']} rounds, w: one update)",
            "out": "N·R·w" if method == "fedavg" else "N·(p + R·w) (p: the public images, once)",
            "cloud_s": "C0·N/N0 (averaging)",
            "store": "S0 (one model or consensus per task)",
        }
    else:  # sl
        p = {"in": n * q["up_e"], "out": n * q["down_e"], "cloud_s": q["cloud_s"] * k, "store": q["cloud_store"] * k}
        f = {
            "in": "N·a (a: one edge's activations and gradients, every step)",
            "out": "N·a",
            "cloud_s": "C0·N/N0 (one middle per edge)",
            "store": "S0·N/N0 (one middle per edge)",
        }
    per_edge = (p["in"] + p["out"]) / n
    p["time_s"] = q["edge_s"] + per_edge / EDGE_BPS + (p["in"] + p["out"]) / CLOUD_BPS + p["cloud_s"]
    f["time_s"] = "t_edge + (in+out)/N / edge link + (in+out) / cloud link + cloud_s"
    return {"values": {key: _num(v) for key, v in p.items()}, "formulas": f}


def table(rows: list[dict], n0: int, m_tasks: int, per_task: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"assumptions": ASSUMPTIONS, "measured_edges": n0, "tasks": m_tasks, "methods": {}}
    for row in rows:
        by_n = {str(n): predict(row, n0, m_tasks, n, per_task)["values"] for n in SCALES}
        out["methods"][row["method"]] = {
            "formulas": predict(row, n0, m_tasks, n0, per_task)["formulas"],
            "by_edges": by_n,
        }
    return out


def deploy_bytes(run_dir: Path) -> int:
    """The bytes the workflow's deployment phase sends: for every edge the encoded ``train.deploy``
    message of its task's compact model (:func:`baim.workflow.deploy_message`, as the deployment
    phase builds it), for a run stopped before its deployment finished."""
    run = Run(run_dir)
    names = run.layout.task_names
    size = {}
    for name in names:
        size[name] = len(encode(deploy_message(run.compact(name))))
    return sum(size[names[e.task]] for e in run.layout.edges)


def run_facts(run_dir: Path) -> dict[str, Any]:
    """What a workflow run measured up to its deployment (read from its phase records, so a run
    stopped after deployment serves): model bytes up and down, cloud storage, cloud time."""

    run = Run(run_dir)
    up, part = run.result("upload", Upload), run.result("partition", Partition)
    budgeted = False
    if run.done("deployment"):
        deployment = run.result("deployment", Deployment)
        download, source = deployment.bytes.down, "the deployment phase's ledger"
        budgeted = any(d.get("budget_bytes") is not None for d in deployment.deliveries.values())
    else:
        download, source = deploy_bytes(run_dir), "the deployment messages encoded from the compact models"
    return {
        "edges": len(up.edges),
        "upload_bytes": up.bytes.up,
        "download_bytes": download,
        "download_source": source,
        "cloud_storage_bytes": run.cloud_storage_bytes("finetune"),
        "cloud_wall_s": sum(run.seconds(p) for p in ("screening", "cloud_finetune", "partition")),
        "compact": part.to_json()["tasks"],
        "budgeted": budgeted,
    }


def check(small_dir: Path, big_dir: Path) -> dict[str, Any]:
    """The extrapolation from ``small_dir`` (a baim run with N0 edges) to ``big_dir`` (the same
    preset with N edges), against what ``big_dir`` measured."""
    small, big = run_facts(small_dir), run_facts(big_dir)
    n0, n = small["edges"], big["edges"]
    layout = Run(big_dir).layout
    m = len(layout.tasks)
    per_task = [sum(1 for e in layout.edges if e.task == t) for t in range(m)]
    u = small["upload_bytes"] / n0
    small_layout = Run(small_dir).layout
    small_per_task = [sum(1 for e in small_layout.edges if e.task == t) for t in range(m)]
    phi, c = compact_model(small["compact"], small_per_task, n0, u)
    predicted = {
        "upload_bytes": n * u,
        "download_bytes": n * u * small["download_bytes"] / small["upload_bytes"]
        if small["budgeted"]
        else compact_download([float(x) for x in per_task], phi, u, c),
        "cloud_storage_bytes": small["cloud_storage_bytes"] * n / n0,
        "cloud_wall_s": small["cloud_wall_s"] * n / n0,
    }
    rows = {}
    for key, pred in predicted.items():
        meas = big[key]
        rows[key] = {"predicted": _num(pred), "measured": _num(meas), "relative_error": _num((pred - meas) / meas)}
    return {
        "small_run": str(small_dir),
        "big_run": str(big_dir),
        "edges": {"small": n0, "big": n},
        "edges_per_task": per_task,
        "formulas": {
            "upload_bytes": "N·u, u = upload bytes per edge of the small run",
            "download_bytes": BUDGETED_DOWNLOAD
            if small["budgeted"]
            else "Σ_t n_t·(L_t·b + c), L_t = n_t + φ·(N − n_t); b = u; φ (feeder fraction) and c "
            "(compact bytes besides learners) from the small run",
            "cloud_storage_bytes": "S0·N/N0",
            "cloud_wall_s": "C0·N/N0 (wall seconds of screening + BAIM training + partition)",
        },
        "phi": phi,
        "c": c,
        "download_source": big["download_source"],
        "measured_compact_learners": {k: v["learners"] for k, v in big["compact"].items()},
        "checks": rows,
        "notes": "bytes and storage are exact counts; cloud_wall_s compares wall seconds of two runs on a shared "
        "machine whose load varied, one of them possibly metered (FLOP counter on), so it checks the order of "
        "magnitude at best",
    }


def _least_squares(x: list[float], y: list[float]) -> tuple[float, float]:
    """(intercept, slope) of y ≈ a + b·x; with one point, the line through it and the origin."""
    if len(x) == 1:
        return 0.0, y[0] / x[0]
    b, a = np.polyfit(np.asarray(x, dtype=float), np.asarray(y, dtype=float), 1)
    return float(a), float(b)


def fit_measured(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The scaling model fitted to real runs at several N (rows of ``benchmarks/scale.py``,
    one per N: ``edges``, ``edges_per_task``, ``upload_per_edge``, ``download_per_edge``,
    ``compact`` per task with ``bytes`` and ``learners``, ``cloud_seconds``, ``peak_rss_mb``).

    Download per edge: with n_t = N/M edges per task, the table's Σ_t n_t·(L_t·b + c) / N is
    c + b·(1/M + φ·(1 − 1/M))·N, a line in N; its intercept and slope are fitted by least
    squares and φ read off the slope. Beside it, what the table predicts from the smallest run
    alone (its φ and c), and the exponent p of download per edge ∝ N^p between the extreme runs.
    Cloud seconds: a power law a·N^p fitted in log-log (the table assumes p = 1). Peak RSS: a
    line in N.

    Runs with a download budget (``budgeted``): an edge's download is bounded by its own
    upload's bytes, not by its task's squad, so the table's model is ρ·b per edge (ρ: down
    over up, read off the smallest run) and φ is not defined (None); the same line is fitted."""
    rows = sorted(rows, key=lambda r: r["edges"])
    ns = [float(r["edges"]) for r in rows]
    down = [float(r["download_per_edge"]) for r in rows]
    m = len(rows[0]["edges_per_task"])
    b = float(np.mean([r["upload_per_edge"] for r in rows]))
    c, slope = _least_squares(ns, down)
    first = rows[0]
    budgeted = bool(first.get("budgeted"))
    phi: float | None = None  # budgeted: no squad to read a share of feeders from
    if not budgeted:
        phi = (slope / b - 1 / m) / (1 - 1 / m) if m > 1 else 0.0
    phi0: float | None
    c0: float | None
    if budgeted:
        phi0, c0 = None, None
        rho0 = float(first["download_per_edge"]) / float(first["upload_per_edge"])
    else:
        phi0, c0 = compact_model(first["compact"], first["edges_per_task"], first["edges"], first["upload_per_edge"])
    secs = [max(float(r["cloud_seconds"]), 1e-6) for r in rows]
    if len(rows) > 1:
        p_cloud, log_a = np.polyfit(np.log(ns), np.log(secs), 1)
        a_cloud = math.exp(float(log_a))
    else:
        p_cloud, a_cloud = 1.0, secs[0] / ns[0]
    rss_a, rss_b = _least_squares(ns, [float(r["peak_rss_mb"]) for r in rows])
    p_down = math.log(down[-1] / down[0]) / math.log(ns[-1] / ns[0]) if len(rows) > 1 and down[0] > 0 else 0.0

    def per_edge_table(n: float) -> float:
        if phi0 is None or c0 is None:
            return rho0 * float(first["upload_per_edge"])
        return compact_download([n / m] * m, phi0, first["upload_per_edge"], c0) / n

    points = sorted({*SCALES, *(r["edges"] for r in rows)})
    return {
        "values": {
            "download_c": _num(c),
            "download_slope": _num(slope),
            "phi": None if phi is None else _num(phi),
            "download_exponent": _num(p_down),
            "table_phi": None if phi0 is None else _num(phi0),
            "table_c": None if c0 is None else _num(c0),
            "table_rho": _num(rho0) if budgeted else None,
            "cloud_a": _num(a_cloud),
            "cloud_exponent": _num(float(p_cloud)),
            "rss_mb_a": _num(rss_a),
            "rss_mb_slope": _num(rss_b),
        },
        "formulas": {
            "download_per_edge": "c + s·N, c and s by least squares (a budget bounds it: no φ)"
            if budgeted
            else "c + s·N = c + b·(1/M + φ·(1 − 1/M))·N, c and s by least squares",
            "table_download_per_edge": "ρ₀·b with ρ₀ = down/up of the smallest run (budgeted downloads)"
            if budgeted
            else "Σ_t n_t·(L_t·b + c₀)/N with φ₀, c₀ from the smallest run",
            "cloud_seconds": "a·N^p, fitted in log-log",
            "peak_rss_mb": "a + s·N",
        },
        "by_edges": {
            str(n): {
                "download_per_edge": _num(c + slope * n),
                "table_download_per_edge": _num(per_edge_table(n)),
                "cloud_seconds": _num(a_cloud * n**p_cloud),
                "peak_rss_mb": _num(rss_a + rss_b * n),
            }
            for n in points
        },
        "measured": {
            str(r["edges"]): {k: r[k] for k in ("download_per_edge", "cloud_seconds", "peak_rss_mb")} for r in rows
        },
    }


def scaling_figure(rows: list[dict[str, Any]], fit: dict[str, Any], path: Path) -> Path:
    """Measured points (download per edge, cloud CPU seconds, peak RSS against N) beside the
    fitted model and, for downloads, the table's extrapolation from the smallest run."""
    plt = pyplot()
    rows = sorted(rows, key=lambda r: r["edges"])
    ns = [r["edges"] for r in rows]
    grid = np.unique(np.geomspace(min(ns), max(SCALES), 60).round())
    v = fit["values"]
    m = len(rows[0]["edges_per_task"])
    first = rows[0]
    if v.get("table_rho") is not None:  # budgeted: the table's download per edge is ρ₀·b
        table = [v["table_rho"] * first["upload_per_edge"] for _ in grid]
    else:
        table = [
            compact_download([n / m] * m, v["table_phi"], first["upload_per_edge"], v["table_c"]) / n for n in grid
        ]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    panels = (
        (
            "download per edge (MB)",
            "download_per_edge",
            [(v["download_c"] + v["download_slope"] * n) / 1e6 for n in grid],
            1e6,
        ),
        ("cloud CPU seconds", "cloud_seconds", [v["cloud_a"] * n ** v["cloud_exponent"] for n in grid], 1.0),
        ("peak RSS (MB)", "peak_rss_mb", [v["rss_mb_a"] + v["rss_mb_slope"] * n for n in grid], 1.0),
    )
    for ax, (title, key, curve, unit) in zip(axes, panels):
        # memory is drawn over the measured range only: a line in N may cross zero beyond it
        span = len(grid) if key != "peak_rss_mb" else int(np.searchsorted(grid, max(ns), side="right"))
        ax.plot(grid[:span], curve[:span], "-", color="tab:blue", label="fitted to the runs")
        if key == "download_per_edge":
            ax.plot(grid, [t / unit for t in table], "--", color="tab:red", label=f"table from N = {ns[0]}")
        ax.plot(ns, [r[key] / unit for r in rows], "o", color="black", label="measured")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("edges N")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle("baim at scale: measured runs and the fitted scaling model")
    return save_figure(fig, path)
