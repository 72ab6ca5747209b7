"""The run report: figures under ``figures/`` and one self-contained ``report.html``.

People judge generative models by looking at them, so the report leads with sample grids
for every phase, then the paper's plots (convergence of the three strategies, FID per edge
and phase, FID per strategy and task), then a table of every number with the extractor and
sample count it was measured with.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from .atomic import write_text
from .figures import image_grid, pyplot, save_figure, save_png
from .runfiles import RunFiles

PHASE_LABELS = {"initial": "edge (initial)", "deployed": "deployed", "personalized": "personalised"}


def _grids(files: RunFiles, tasks: list[str], strategies: list[str]) -> list[tuple[str, Path, str]]:
    out = []
    real = [np.load(files.real_images(t))[:8] for t in tasks]
    out.append(
        (
            "Real test images",
            save_png(image_grid(np.concatenate(real)), files.figure("real.png")),
            "one row per task: " + ", ".join(tasks),
        )
    )
    for which in ("initial", "deployed", "personalized"):
        found = files.edge_image_files(which, "fitted")
        if found:
            grid = np.concatenate([np.load(f)[:8] for _, f in found])
            out.append(
                (
                    f"Samples: {PHASE_LABELS[which]}",
                    save_png(image_grid(grid), files.figure(f"samples_{which}.png")),
                    "one row per edge (" + ", ".join(f"edge-{e}" for e, _ in found) + "), z from the prior "
                    "fitted to the model's own training data",
                )
            )
    for s in strategies:
        grid = np.concatenate([np.load(files.baim_images(s, t, "fitted"))[:8] for t in tasks])
        out.append(
            (
                f"Samples: BAIM, strategy {s}",
                save_png(image_grid(grid), files.figure(f"samples_baim_{s}.png")),
                "one row per task, z from the prior fitted to the cloud's common data",
            )
        )
    return out


def _metric(edge: dict, which: str, key: str) -> float | None:
    return edge["models"].get(which, {}).get(key)


def _plots(files: RunFiles, summary: dict, tasks: list[str]) -> list[tuple[str, Path, str]]:
    plt = pyplot()
    out = []
    strat = summary["strategies"]
    curves = {s: [row for row in r["curve"] if "test_loss_mean" in row] for s, r in strat.items()}
    if any(curves.values()):  # none when the run logged no test curves (curve_test_per_task 0)
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for s, rows in curves.items():
            ax.plot([row["epoch"] for row in rows], [row["test_loss_mean"] for row in rows], marker="o", label=s)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_ylabel("test loss (mean over tasks)")
        ax.set_title("BAIM convergence per strategy (paper Fig. 5(c))")
        ax.legend()
        out.append(
            (
                "Convergence of the three strategies",
                save_figure(fig, files.figure("strategies_test_loss.png")),
                "test loss = MSE + β·KL on each task's test images after every epoch",
            )
        )

    edges = summary["edges"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.27
    xs = np.arange(len(edges))
    for k, which in enumerate(("initial", "deployed", "personalized")):
        vals = [_metric(e, which, "fid_fitted") or np.nan for e in edges]
        ax.bar(xs + (k - 1) * width, vals, width, label=PHASE_LABELS[which])
    ax.set_xticks(xs, [f"edge {e['edge']}\n{e['task']}\n{e['tier']}" for e in edges], fontsize=7)
    ax.set_ylabel(f"FID, fitted prior ({summary['fid_extractor']}, n={summary['fid_count']})")
    ax.set_title("FID per edge and phase (paper Fig. 5(d)); lower is better")
    ax.legend(fontsize=8)
    out.append(
        (
            "FID per edge: initial, deployed, personalised",
            save_figure(fig, files.figure("fid_edges.png")),
            "every model sampled the same way (z from a prior fitted to its own training data); real-vs-real "
            "FID per task: " + ", ".join(f"{k} {v['fid']:.1f}" for k, v in summary["real_vs_real"].items()),
        )
    )

    scored = _scored(summary)
    if scored:  # none when the BAIM was not scored (cloud_evaluation off)
        out.append(_strategy_fids(plt, files, summary, tasks, scored))
    if "timeline" in summary:
        out.append(_timeline(plt, files, summary))
    return out


def _strategy_fids(plt, files: RunFiles, summary: dict, tasks: list[str], scored: dict) -> tuple[str, Path, str]:
    """The BAIM's fitted-prior FID per strategy and task."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = np.arange(len(tasks))
    width = 0.8 / max(1, len(scored))
    for k, (s, r) in enumerate(scored.items()):
        fids = [r["per_task"][t]["fid_fitted"] for t in tasks]
        ax.bar(xs + (k - (len(scored) - 1) / 2) * width, fids, width, label=s)
    ax.set_xticks(xs, tasks)
    ax.set_ylabel(f"FID, fitted prior ({summary['fid_extractor']}, n={summary['fid_count']})")
    ax.set_title("BAIM FID per strategy and task")
    ax.legend()
    return ("FID per strategy", save_figure(fig, files.figure("fid_strategies.png")), "")


def _timeline(plt, files: RunFiles, summary: dict) -> tuple[str, Path, str]:
    """Who uploaded, joined, left and got which BAIM version when (one row per edge)."""
    tl, life = summary["timeline"], summary["lifecycle"]
    events = tl["events"]
    edges = sorted({ev["edge"] for ev in events if "edge" in ev})
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(edges) + 1.6))
    style = {"upload": ("^", "tab:blue"), "join": (">", "tab:green"), "leave": ("x", "tab:red")}
    for name, (marker, color) in style.items():
        pts = [(ev["t_s"], ev["edge"]) for ev in events if ev["event"] == name]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, color=color, s=60, label=name, zorder=3)
    deps = [(ev["t_s"], ev["edge"], ev["version"]) for ev in events if ev["event"] == "deployment"]
    if deps:
        sc = ax.scatter([d[0] for d in deps], [d[1] for d in deps], c=[d[2] for d in deps], cmap="viridis",
                        marker="o", s=45, label="deployment (colour: version)", zorder=3)  # fmt: skip
        if len({d[2] for d in deps}) > 1:
            fig.colorbar(sc, ax=ax, label="BAIM version", ticks=sorted({d[2] for d in deps}))
    for ev in events:
        if ev["event"] == "baim_version":
            ax.axvline(ev["t_s"], color="grey", ls="--", lw=0.8)
            ax.text(ev["t_s"], min(edges) - 0.45, f" v{ev['version']}", fontsize=7, ha="left", va="top")
    ax.set_yticks(edges, [f"edge {e}" for e in edges])
    ax.set_xlabel("simulated seconds (edges' training from tier and data; cloud work measured)")
    ax.set_title(f"Timeline, {life['schedule']} schedule (staleness bound {life['staleness']})")
    ax.set_ylim(min(edges) - 0.8, max(edges) + 0.5)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.22), ncol=4, frameon=False)
    caption = (
        f"first deployment at {tl['first_deployment_s']:.1f} s, all uploads in at {tl['all_uploads_in_s']:.1f} s; "
        f"{tl['final_version'] + 1} BAIM version(s); edges that left: {life['leave'] or 'none'}, joined late: "
        f"{life['join_late'] or 'none'}"
    )
    return "Timeline: uploads, BAIM versions, deployments", save_figure(fig, files.figure("timeline.png")), caption


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _scored(summary: dict) -> dict[str, dict]:
    """The strategies whose BAIM the cloud scored per task (none with ``cloud_evaluation`` off)."""
    return {s: r for s, r in summary["strategies"].items() if r["per_task"]}


def write_report(root: str | Path, summary: dict, tasks: list[str]) -> Path:
    files = RunFiles(root)
    strategies = list(_scored(summary))
    sections = _grids(files, tasks, strategies) + _plots(files, summary, tasks)
    ext, n = summary["fid_extractor"], summary["fid_count"]
    parts = [
        f"<h1>baim run — preset {html.escape(summary['preset'])}</h1>",
        f"<p>data set {html.escape(summary['dataset'])}, engine {summary['engine']}, seed {summary['seed']}, "
        f"wall time {summary['wall_seconds']:.0f} s (sum of phases). Every FID and KID below uses the "
        f"<b>{html.escape(ext)}</b> feature network on <b>{n}</b> generated vs {n} real test images. Three "
        "procedures, each compared only with itself: <i>fitted</i> (z from a Gaussian fitted to the model's "
        "codes of its own training data), <i>N(0,I)</i> (z from the standard normal), <i>recon</i> "
        "(test images reconstructed with z = μ). The real-vs-real value at the same count is the floor: "
        + ", ".join(
            f"{html.escape(k)} FID {v['fid']:.1f} / KID {v['kid']:.4f}" for k, v in summary["real_vs_real"].items()
        )
        + ".</p>",
    ]
    for title, path, caption in sections:
        parts.append(
            f"<figure><figcaption><b>{html.escape(title)}</b> {html.escape(caption)}</figcaption>"
            f"<img src='{_img(path)}'></figure>"
        )
    cols = [
        ("test_loss", "test loss"),
        ("fid_fitted", "FID fitted"),
        ("fid_standard", "FID N(0,I)"),
        ("fid_reconstruction", "FID recon"),
        ("kid_fitted", "KID fitted"),
    ]
    parts.append(
        "<h2>Edges</h2><table><tr><th>edge</th><th>task</th><th>tier</th><th>model</th>"
        + "".join(f"<th>{label}</th>" for _, label in cols)
        + "</tr>"
    )
    for e in summary["edges"]:
        for which, m in e["models"].items():
            parts.append(
                f"<tr><td>{e['edge']}</td><td>{html.escape(e['task'])}</td><td>{e['tier']}</td>"
                f"<td>{PHASE_LABELS[which]}</td>" + "".join(f"<td>{_fmt(m.get(k))}</td>" for k, _ in cols) + "</tr>"
            )
    parts.append("</table>")
    parts.append(
        "<h2>Strategies</h2><table><tr><th>strategy</th><th>final test loss</th>"
        + "".join(f"<th>FID fitted {html.escape(t)}</th><th>FID N(0,I) {html.escape(t)}</th>" for t in tasks)
        + "<th>connections (of candidates)</th><th>parameters</th><th>TSGate accuracy</th></tr>"
    )
    for s, r in summary["strategies"].items():
        parts.append(
            f"<tr><td>{s}</td><td>{_fmt(r['final_test_loss'])}</td>"
            + "".join(
                f"<td>{_fmt(r['per_task'].get(t, {}).get('fid_fitted'))}</td>"
                f"<td>{_fmt(r['per_task'].get(t, {}).get('fid_standard'))}</td>"
                for t in tasks
            )
            + f"<td>{r['connections']} ({r['candidates']})</td><td>{r['parameters']:,}</td>"
            f"<td>{_fmt(r['tsgate_accuracy'])}</td></tr>"
        )
    parts.append("</table>")
    rec = summary["recipes"]
    stats = "kept" if rec["cloud"]["keep_norm_stats"] else "updated"
    gates = "start on the best-screened upload" if rec["gate_init_from_screening"] else "start even"
    parts.append(
        f"<p>Recipe for models that start from trained weights: <b>{html.escape(summary['cloud_recipe'])}</b> "
        f"(trained weights and gates at {rec['cloud']['trained_lr_scale']}× lr {rec['cloud']['lr']}, BatchNorm "
        f"statistics {stats}, warm-up {rec['cloud']['warmup_steps']} steps, gates {gates}).</p>"
    )
    parts.append(
        "<h2>Fused BAIM at step 0 and after training, against its edges</h2>"
        "<p>Same test images, same procedures; the best initial edge of each task is the bar to clear.</p>"
        "<table><tr><th>strategy</th><th>task</th><th>test loss step 0</th><th>after</th>"
        "<th>best edge</th><th>FID fitted step 0</th><th>after</th><th>edges' mean</th></tr>"
    )
    if not _scored(summary):
        parts.append(
            "<tr><td colspan='8'>not scored: this run turned the cloud's own scoring of the BAIM off "
            "(cloud_evaluation false, as a study does); the edges' tables above score what they serve</td></tr>"
        )
    for s, r in _scored(summary).items():
        for t in tasks:
            edges = [e["models"]["initial"] for e in summary["edges"] if e["task"] == t and "initial" in e["models"]]
            best = min((m["test_loss"] for m in edges), default=None)
            mean_fid = float(np.mean([m["fid_fitted"] for m in edges])) if edges else None
            parts.append(
                f"<tr><td>{s}</td><td>{html.escape(t)}</td><td>{_fmt(r['step0'][t]['test_loss'])}</td>"
                f"<td>{_fmt(r['per_task'][t]['test_loss'])}</td><td>{_fmt(best)}</td>"
                f"<td>{_fmt(r['step0'][t]['fid_fitted'])}</td><td>{_fmt(r['per_task'][t]['fid_fitted'])}</td>"
                f"<td>{_fmt(mean_fid)}</td></tr>"
            )
    parts.append("</table>")
    p = summary["partition"]
    parts.append(
        f"<h2>Partition</h2><p>from the {p['source_strategy']} BAIM ({p['baim_parameters']:,} parameters); "
        f"max |compact − BAIM| over all tasks = {p['max_abs_diff']:.3g}</p><table>"
        "<tr><th>task</th><th>parameters</th><th>bytes</th><th>learners</th><th>connections</th>"
        "<th>max abs diff</th></tr>"
    )
    for t, v in p["tasks"].items():
        parts.append(
            f"<tr><td>{html.escape(t)}</td><td>{v['parameters']:,}</td><td>{v['bytes']:,}</td>"
            f"<td>{v['learners']}</td>"
            f"<td>{v['connections']}</td><td>{v['max_abs_diff']:.3g}</td></tr>"
        )
    parts.append("</table>")
    b = summary["bytes"]
    parts.append(
        f"<h2>Network</h2><p>uploaded {b['upload']:,} bytes, downloaded {b['download']:,} bytes "
        "(exact sizes of the serialized messages).</p>"
    )
    miss = {k: v for k, v in summary.get("missing", {}).items() if v}
    scr = summary.get("screening", {})
    if miss or scr.get("rejected") or scr.get("quarantined"):
        parts.append(
            "<h2>Problems</h2><pre>"
            + html.escape(
                str({"missing": miss, "rejected": scr.get("rejected"), "quarantined": scr.get("quarantined")})
            )
            + "</pre>"
        )
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px}"
        "figure{margin:1.5em 0}img{max-width:100%;image-rendering:pixelated}"
    )
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>baim report</title><style>{style}</style>"
        f"</head><body>{''.join(parts)}</body></html>"
    )
    return write_text(files.report, doc)
