"""``baim compare``'s outputs besides compare.json: the table (compare.md), the KPI radar
(the paper's Fig. 2, from measurements), bytes against quality for the round-based methods,
the scaling figure, and a self-contained report section (compare.html)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..figures import pyplot, save_figure
from ..runfiles import RunFiles

MB = 1e6
COLUMNS = (
    ("method", "method", lambda r: r["method"]),
    ("up MB", "bytes_up", lambda r: f"{r['bytes_up'] / MB:.3f}"),
    ("down MB", "bytes_down", lambda r: f"{r['bytes_down'] / MB:.3f}"),
    ("raw data MB", "raw_data_bytes", lambda r: f"{r['raw_data_bytes'] / MB:.3f}"),
    ("edge CPU s", "edge_cpu_s", lambda r: f"{r['edge_cpu_s']:.1f}"),
    ("cloud CPU s", "cloud_cpu_s", lambda r: f"{r['cloud_cpu_s']:.1f}"),
    ("edge GFLOP", "edge_flops", lambda r: f"{r['edge_flops'] / 1e9:.1f}"),
    ("cloud GFLOP", "cloud_flops", lambda r: f"{r['cloud_flops'] / 1e9:.1f}"),
    ("edge storage MB", "edge_storage_bytes", lambda r: f"{r['edge_storage_bytes'] / MB:.3f}"),
    ("cloud storage MB", "cloud_storage_bytes", lambda r: f"{r['cloud_storage_bytes'] / MB:.3f}"),
    ("latency ms (round trips)", "latency_ms", lambda r: f"{r['latency_ms']:.2f} ({r['round_trips']})"),
    ("wall s", "wall_s", lambda r: f"{r['wall_s']:.1f}"),
    ("test loss", "test_loss", lambda r: f"{r['test_loss']:.5f}"),
    ("FID fitted", "fid", lambda r: f"{r['fid']:.2f}"),
    ("KID fitted", "kid", lambda r: f"{r['kid']:.4f}"),
)
# radar axes: (label, value of a row, whether it is a cost; quality axes score best/value)
AXES = (
    ("communication\n(bytes up+down)", lambda r: r["bytes_up"] + r["bytes_down"]),
    ("privacy\n(raw bytes leaving edges)", lambda r: r["raw_data_bytes"]),
    ("edge compute\n(FLOPs)", lambda r: r["edge_flops"]),
    ("cloud compute\n(FLOPs)", lambda r: r["cloud_flops"]),
    ("storage\n(edge + cloud bytes)", lambda r: r["edge_storage_bytes"] + r["cloud_storage_bytes"]),
    ("latency\n(ms of compute, 16 images)", lambda r: r["latency_ms"]),
    ("network round trips\nper generation", lambda r: r["round_trips"]),
    ("quality\n(FID, fitted)", lambda r: r["fid"]),
)


def markdown(result: dict) -> str:
    rows = result["methods"]
    lines = [
        f"# baim compare — preset {result['preset']}, seed {result['seed']}, {result['edges']} edges, "
        f"tasks {', '.join(result['tasks'])}",
        "",
        f"Quality: mean over edges; FID/KID with the `{result['fid_extractor']}` extractor at "
        f"{result['fid_count']} images, sampling: {result['fid_sampling']}.",
        "",
        "| " + " | ".join(c[0] for c in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(c[2](r) for c in COLUMNS) + " |" for r in rows]
    lines += ["", "Settings: " + ", ".join(f"{k} = {v}" for k, v in result["settings"].items()), ""]
    lines += ["Definitions:", ""] + [f"- **{k}**: {v}" for k, v in result["definitions"].items()]
    f = result.get("findings", {})
    if f:
        lines += ["", "## Findings", ""]
        for key, v in f.items():
            if key.endswith(("_nll_bpd", "_test_loss")) and "reach" in key:
                if v["reached"]:
                    since = (
                        f" (not yet at round {v['after_round']}, {v['bytes_cum_before'] / MB:.3f} MB)"
                        if "after_round" in v
                        else ""
                    )
                    lines.append(
                        f"- {key}: reached after round {v['round']} with {v['bytes_cum'] / MB:.3f} MB{since}, "
                        f"**{v['ratio_to_baim_bytes']:.2f}×** baim's bytes"
                    )
                else:
                    lines.append(
                        f"- {key}: **not reached** in {v['after_rounds']} rounds ({v['bytes_cum_at_last'] / MB:.3f} MB "
                        f"so far, ≥ {v['ratio_to_baim_bytes_lower_bound']:.2f}× baim's bytes)"
                    )
        for b in f.get("beat_baim_on_quality", []):
            lines.append(
                f"- **{b['method']} beats baim** on {', '.join(b['better_on'])} (FID {b['fid']:.2f}, test loss "
                f"{b['test_loss']:.5f}) at {b['bytes_vs_baim']:.2f}× baim's bytes, {b['raw_data_bytes'] / MB:.2f} MB "
                f"of raw data out of the edges, {b['cloud_cpu_s']:.1f} s cloud CPU, {b['edge_cpu_s']:.1f} s edge CPU"
            )
        if not f.get("beat_baim_on_quality"):
            lines.append("- no method beats baim on FID or test loss here")
        for key, methods in f.get("methods_better_than_baim_per_kpi", {}).items():
            lines.append(f"- baim loses on {key} to: {', '.join(methods)}")
    rounds = [r for r in rows if r.get("rounds")]
    if rounds:
        head = "| method | round | cumulative MB | test loss | nll (bpd) |"
        lines += ["", "## Quality after the scored rounds", "", head]
        lines.append("|---|---|---|---|---|")
        for r in rounds:
            for x in (x for x in r["rounds"] if "nll_bpd" in x):
                lines.append(
                    f"| {r['method']} | {x['round']} | {x['bytes_cum'] / MB:.3f} | "
                    f"{x['test_loss']:.5f} | {x['nll_bpd']:.4f} |"
                )
    sc = result.get("scaling")
    if sc:
        lines += ["", "## Toward internet scale (extrapolated from the measurements above)", "", sc["assumptions"], ""]
        lines += [
            "| method | edges | cloud in MB | cloud out MB | cloud CPU s | cloud storage MB | time to deployed s |"
        ]
        lines.append("|---|---|---|---|---|---|---|")
        for m, v in sc["methods"].items():
            for n, p in v["by_edges"].items():
                lines.append(
                    f"| {m} | {n} | {p['in'] / MB:.4g} | {p['out'] / MB:.4g} | {p['cloud_s']:.4g} | "
                    f"{p['store'] / MB:.4g} | {p['time_s']:.4g} |"
                )
        lines += ["", "Formulas (N edges, N0 measured, M tasks; C0, S0 measured cloud CPU and storage):", ""]
        for m, v in sc["methods"].items():
            lines.append(f"- **{m}**: " + "; ".join(f"{k} = {f}" for k, f in v["formulas"].items()))
    chk = result.get("scale_check")
    if chk:
        lines += [
            "",
            f"## Scaling check: {chk['edges']['small']} → {chk['edges']['big']} edges (a real run)",
            "",
            "| quantity | predicted | measured | relative error |",
            "|---|---|---|---|",
        ]
        for k, v in chk["checks"].items():
            lines.append(f"| {k} | {v['predicted']:.6g} | {v['measured']:.6g} | {v['relative_error']:+.1%} |")
        lines += [
            "",
            f"φ = {chk['phi']:.3g} (feeder fraction), c = {chk['c']:.4g} bytes; learners in the big run's compact "
            f"models: {chk['measured_compact_learners']}. "
            f"Download bytes from {chk.get('download_source', 'the ledger')}. " + chk.get("notes", ""),
        ]
    return "\n".join(lines) + "\n"


def _score(values: list[float], quality: bool) -> list[float]:
    """Higher is better, in [0, 1]. Quality: best FID / FID. A cost: its place between the best
    (1) and the worst (0) method on a log scale, zero counted as a tenth of the smallest non-zero
    value (so "none at all" scores 1, not infinitely better)."""
    if quality:
        best = min(values)
        return [best / v if v > 0 else 1.0 for v in values]
    positive = [v for v in values if v > 0]
    if not positive:
        return [1.0] * len(values)
    floor = min(positive) / 10
    logs = [math.log10(max(v, floor)) for v in values]
    lo, hi = min(logs), max(logs)
    if hi - lo < 1e-12:
        return [1.0] * len(values)
    return [1 - (x - lo) / (hi - lo) for x in logs]


def radar(result: dict, path: Path) -> Path:
    plt = pyplot()
    rows = result["methods"]
    labels = [a[0] for a in AXES]
    scores: dict[str, list[float]] = {r["method"]: [] for r in rows}
    for i, (_, fn) in enumerate(AXES):
        vals = [float(fn(r)) for r in rows]
        for r, sc in zip(rows, _score(vals, quality=i == len(AXES) - 1)):
            scores[r["method"]].append(sc)
    angles = [2 * math.pi * i / len(AXES) for i in range(len(AXES))]
    fig = plt.figure(figsize=(15, 6.5))
    ax = fig.add_subplot(1, 2, 1, polar=True)
    for m, s in scores.items():
        ax.plot(angles + angles[:1], s + s[:1], marker="o", label=m, linewidth=2.5 if m == "baim" else 1.2)
        if m == "baim":
            ax.fill(angles + angles[:1], s + s[:1], alpha=0.12)
    ax.set_xticks(angles)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(
        "KPIs measured (outer = better): each cost placed between the best (1) and worst (0) method on a "
        "log scale\n(zero = a tenth of the smallest non-zero value); quality scored best FID / FID",
        fontsize=9,
    )
    ax.legend(loc="upper right", bbox_to_anchor=(0.0, 1.12), fontsize=8)
    tab = fig.add_subplot(1, 2, 2)
    tab.axis("off")
    cols = ("method", "up+down MB", "raw MB", "edge GFLOP", "cloud GFLOP", "storage MB", "lat. ms (RT)", "FID")
    cells = [
        [
            r["method"],
            f"{(r['bytes_up'] + r['bytes_down']) / MB:.3g}",
            f"{r['raw_data_bytes'] / MB:.3g}",
            f"{r['edge_flops'] / 1e9:.3g}",
            f"{r['cloud_flops'] / 1e9:.3g}",
            f"{(r['edge_storage_bytes'] + r['cloud_storage_bytes']) / MB:.3g}",
            f"{r['latency_ms']:.3g} ({r['round_trips']})",
            f"{r['fid']:.3g}",
        ]
        for r in rows
    ]
    t = tab.table(cellText=cells, colLabels=cols, loc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    t.scale(1.1, 1.6)
    tab.set_title(
        f"raw measurements (preset {result['preset']}, {result['edges']} edges; FID {result['fid_extractor']}, "
        f"{result['fid_count']} images, fitted prior)",
        fontsize=9,
    )
    return save_figure(fig, path)


def bytes_vs_quality(result: dict, path: Path) -> Path:
    plt = pyplot()
    rows = result["methods"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in (
        (axes[0], "nll_bpd", "IWAE bound on test NLL (bits/dim), mean over edges"),
        (axes[1], "test_loss", "test loss"),
    ):
        for r in rows:
            total = r["bytes_up"] + r["bytes_down"]
            scored = [x for x in r.get("rounds") or [] if key in x]
            if scored:
                xs = [x["bytes_cum"] / MB for x in scored]
                ax.plot(xs, [x[key] for x in scored], marker="o", label=f"{r['method']} (after scored rounds)")
            elif total > 0:
                size = 120 if r["method"] == "baim" else 50
                ax.scatter(
                    [total / MB], [r[key]], s=size, marker="*" if r["method"] == "baim" else "s", label=r["method"]
                )
            else:
                ax.axhline(r[key], linestyle=":", color="grey", label=f"{r['method']} (no bytes)")
        ax.set_xscale("log")
        ax.set_xlabel("cumulative bytes up + down, all edges (MB, log)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle("Quality against communication (same evaluation for every method)")
    return save_figure(fig, path)


def scaling_figure(result: dict, path: Path) -> Path:
    plt = pyplot()
    sc = result["scaling"]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    panels = (
        ("cloud bytes in + out (MB)", lambda p: (p["in"] + p["out"]) / MB),
        ("cloud CPU s", lambda p: p["cloud_s"]),
        ("cloud storage (MB)", lambda p: p["store"] / MB),
        ("time to a deployed model (s)", lambda p: p["time_s"]),
    )
    for ax, (label, fn) in zip(axes, panels):
        zero = []
        for m, v in sc["methods"].items():
            ns = [int(n) for n in v["by_edges"]]
            ys = [fn(p) for p in v["by_edges"].values()]
            if all(y <= 0 for y in ys):
                zero.append(m)
                continue
            ax.plot(ns, ys, marker="o", label=m)
        if zero:
            ax.text(0.02, 0.98, "zero: " + ", ".join(zero), transform=ax.transAxes, va="top", fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("edges")
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Extrapolated from measured per-edge / per-round costs (formulas in compare.md)", fontsize=10)
    return save_figure(fig, path)


def write_outputs(out: Path, result: dict[str, Any]) -> None:
    write_text(out / "compare.md", markdown(result))
    files = RunFiles(out)  # a comparison's figures go where a run's do
    made = []
    if len(result["methods"]) > 1:
        made.append(("KPI radar (the paper's Fig. 2, measured)", radar(result, files.figure("kpi_radar.png"))))
    if any(r.get("rounds") for r in result["methods"]):
        made.append(("Bytes against quality", bytes_vs_quality(result, files.figure("bytes_vs_quality.png"))))
    if result.get("scaling"):
        made.append(("Toward internet scale", scaling_figure(result, files.figure("scaling.png"))))
    write_text(out / "compare.html", section_html(result, made))


def section_html(result: dict, figures: list[tuple[str, Path]]) -> str:
    """The comparison as one self-contained HTML page (figures inlined, the table below)."""
    parts = [
        "<!doctype html><meta charset='utf-8'><title>baim compare</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>",
        "<h1>Measured comparison with KD, FedAvg, federated distillation and split learning</h1>",
    ]
    for title, p in figures:
        data = base64.b64encode(Path(p).read_bytes()).decode()
        parts.append(f"<h2>{html.escape(title)}</h2><img style='max-width:100%' src='data:image/png;base64,{data}'>")
    parts.append("<h2>Table and findings</h2><pre>" + html.escape(markdown(result)) + "</pre>")
    return "\n".join(parts) + "\n"
