"""``baim sweep``: one preset over several seeds, and what holds across them.

One seed is an anecdote: FID moves far more with the training seed than with the sampling
seed. A sweep runs the whole workflow once per seed (each in ``DIR/seed-N``, each resumable),
then writes:

- ``summary.json``: every headline number with its per-seed values, mean and std;
- ``claims.json``: the paper's claims, each decided from the per-seed values (a claim holds
  when it holds on every seed) and stated with what was measured;
- ``figures/`` with error bars and a self-contained ``report.html``.

Comparisons always put the same sampling procedure on both sides; FID headlines use the
``fitted`` procedure (each model's prior fitted to its own training data) and the
``standard`` one (N(0, I)) is reported beside it, never mixed.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_json, write_text
from .config import RunConfig
from .engines import run
from .errors import ConfigError
from .figures import pyplot, save_figure
from .runfiles import RunFiles

PROCEDURES = ("fitted", "standard")


def _stats(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=float)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "per_seed": [float(v) for v in arr],
    }


def headline(summary: dict) -> dict[str, float]:
    """The numbers of one run that a sweep aggregates, flat (``a/b/c`` keys)."""
    out: dict[str, float] = {}
    for s, r in summary["strategies"].items():
        out[f"strategy/{s}/final_test_loss"] = r["final_test_loss"]
        for task, m in r["per_task"].items():
            for key in ("test_loss", "fid_fitted", "fid_standard", "kid_fitted"):
                out[f"strategy/{s}/{task}/{key}"] = m[key]
            for key in ("test_loss", "fid_fitted", "fid_standard"):
                out[f"strategy/{s}/{task}/step0_{key}"] = r["step0"][task][key]
    by_task: dict[str, list[dict]] = {}
    for e in summary["edges"]:
        by_task.setdefault(e["task"], []).append(e)
    for task, edges in by_task.items():
        for which in ("initial", "deployed", "personalized"):
            rows = [e["models"][which] for e in edges if which in e["models"]]
            if not rows:
                continue
            for key in ("test_loss", "fid_fitted", "fid_standard"):
                vals = [r[key] for r in rows]
                out[f"edges/{task}/{which}/{key}/mean"] = float(np.mean(vals))
                out[f"edges/{task}/{which}/{key}/best"] = float(np.min(vals))
    for proc in PROCEDURES:
        pairs = [
            (e["models"]["initial"][f"fid_{proc}"], e["models"]["personalized"][f"fid_{proc}"])
            for e in summary["edges"]
            if {"initial", "personalized"} <= set(e["models"])
        ]
        if pairs:
            out[f"personalized_beats_initial/{proc}/fraction"] = float(np.mean([b < a for a, b in pairs]))
    out["partition/max_abs_diff"] = summary["partition"]["max_abs_diff"]
    out["wall_seconds"] = summary["wall_seconds"]
    return out


def _claims(runs: dict[int, dict], tasks: list[str]) -> list[dict]:
    seeds = sorted(runs)
    h = {s: headline(runs[s]) for s in seeds}
    strategies = list(runs[seeds[0]]["strategies"])
    claims = []

    def add(claim: str, paper: str, per_seed: dict[int, Any], ok: dict[int, bool], note: str = "") -> None:
        claims.append(
            {
                "claim": claim,
                "paper": paper,
                "measured": {"per_seed": per_seed, "note": note},
                "holds": all(ok.values()),
                "holds_on_seeds": sum(ok.values()),
                "seeds": len(seeds),
            }
        )

    final = {s: {st: h[s][f"strategy/{st}/final_test_loss"] for st in strategies} for s in seeds}
    if {"finetune", "freeze", "scratch"} <= set(strategies):
        add(
            "finetune reaches the lowest final test loss of the three strategies",
            "Fig. 5(c): finetune converges best",
            final,
            {s: min(final[s], key=lambda k: final[s][k]) == "finetune" for s in seeds},
            "mean test loss over tasks, each task's full test set",
        )
        add(
            "freeze ends worst of the three strategies",
            "Fig. 5(c): freeze converges worst",
            final,
            {s: max(final[s], key=lambda k: final[s][k]) == "freeze" for s in seeds},
        )
    deployed = runs[seeds[0]]["partition"]["source_strategy"]

    def below(metric: str, edges: str, label: str) -> tuple[dict[int, Any], dict[int, bool]]:
        """Per seed and task: the deployed model's ``metric`` against the initial edges' ``edges`` statistic."""
        per_seed: dict[int, Any] = {}
        ok: dict[int, bool] = {}
        for s in seeds:
            rows = {
                t: {"deployed": h[s][f"strategy/{deployed}/{t}/{metric}"], label: h[s][f"edges/{t}/initial/{edges}"]}
                for t in tasks
            }
            per_seed[s], ok[s] = rows, all(r["deployed"] < r[label] for r in rows.values())
        return per_seed, ok

    add(
        "each task's deployed model has a lower test loss than every initial edge model of that task",
        "the BAIM improves on the edges it came from",
        *below("test_loss", "test_loss/best", "best_initial_edge"),
        "test loss on each task's full test set",
    )
    for proc in PROCEDURES:
        add(
            f"each task's deployed model has a lower FID ({proc} sampling on both sides) than the mean of that "
            "task's initial edge models",
            "Fig. 5(d)",
            *below(f"fid_{proc}", f"fid_{proc}/mean", "mean_initial_edges"),
        )
    for proc in PROCEDURES:
        frac = {s: h[s].get(f"personalized_beats_initial/{proc}/fraction", float("nan")) for s in seeds}
        add(
            f"personalised beats initial in FID ({proc} sampling on both sides) on at least 80 % of edges",
            "Fig. 5(d): personalised edge models beat the initial ones",
            frac,
            {s: frac[s] >= 0.8 for s in seeds},
        )
    diff = {s: h[s]["partition/max_abs_diff"] for s in seeds}
    add(
        "partition is lossless (compact model = BAIM routed to its task, to 1e-6)",
        "Sec. IV: lossless partition",
        diff,
        {s: diff[s] <= 1e-6 for s in seeds},
    )
    return claims


def _figures(out: Path, runs: dict[int, dict], agg: dict[str, dict], tasks: list[str]) -> list[tuple[str, Path]]:
    plt = pyplot()
    seeds = sorted(runs)
    strategies = list(runs[seeds[0]]["strategies"])
    figs = []
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for st in strategies:
        rows = [runs[s]["strategies"][st]["curve"] for s in seeds]
        if not all(r and all("test_loss_mean" in x for x in r) for r in rows):
            continue  # a run that logged no test curves (curve_test_per_task 0)
        curves = np.array([[x["test_loss_mean"] for x in r] for r in rows])
        x = np.arange(1, curves.shape[1] + 1)
        mean, std = curves.mean(0), curves.std(0, ddof=1) if len(seeds) > 1 else np.zeros(curves.shape[1])
        ax.plot(x, mean, marker="o", label=st)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test loss (mean over tasks)")
    ax.set_title(f"Strategies, mean ± std over {len(seeds)} seeds (paper Fig. 5(c))")
    ax.legend()
    figs.append(("Convergence of the three strategies", save_figure(fig, RunFiles(out).figure("strategies.png"))))

    deployed = runs[seeds[0]]["partition"]["source_strategy"]
    for key, label in (
        ("test_loss", "test loss"),
        ("fid_fitted", "FID, fitted prior"),
        ("fid_standard", "FID, N(0, I)"),
    ):
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        xs = np.arange(len(tasks))
        series = [
            ("initial edges (mean)", [f"edges/{t}/initial/{key}/mean" for t in tasks]),
            ("initial edges (best)", [f"edges/{t}/initial/{key}/best" for t in tasks]),
            ("step 0 (fused)", [f"strategy/{deployed}/{t}/step0_{key}" for t in tasks]),
            ("deployed", [f"strategy/{deployed}/{t}/{key}" for t in tasks]),
            ("personalised (mean)", [f"edges/{t}/personalized/{key}/mean" for t in tasks]),
        ]
        width = 0.8 / len(series)
        for k, (name, keys) in enumerate(series):
            if not all(kk in agg for kk in keys):
                continue
            ax.bar(
                xs + (k - (len(series) - 1) / 2) * width,
                [agg[kk]["mean"] for kk in keys],
                width,
                yerr=[agg[kk]["std"] for kk in keys],
                capsize=3,
                label=name,
            )
        ax.set_xticks(xs, tasks)
        ax.set_ylabel(label)
        ax.set_title(f"{label} per task, mean ± std over {len(seeds)} seeds; lower is better")
        ax.legend(fontsize=7)
        figs.append(
            (
                f"{label}: edges, fused BAIM, deployed, personalised",
                save_figure(fig, RunFiles(out).figure(f"tasks_{key}.png")),
            )
        )
    return figs


def aggregate(out: str | Path, runs: dict[int, dict]) -> dict:
    """Write the sweep's summary, claims, figures and report from finished runs (seed → summary)."""
    out = Path(out)
    seeds = sorted(runs)
    unscored = [s for s in seeds if not all(r["per_task"] for r in runs[s]["strategies"].values())]
    if unscored:  # the sweep's claims are about the BAIM's own scores
        raise ConfigError(
            f"the runs of seeds {unscored} did not score their BAIM (cloud_evaluation false): a sweep "
            "compares those scores; run them with cloud_evaluation true (the presets' default)"
        )
    tasks = list(next(iter(runs[seeds[0]]["strategies"].values()))["per_task"])
    per = {s: headline(runs[s]) for s in seeds}
    keys = sorted(set.intersection(*(set(v) for v in per.values())))
    agg = {k: _stats([per[s][k] for s in seeds]) for k in keys}
    first = runs[seeds[0]]
    summary = {
        "preset": first["preset"],
        "seeds": seeds,
        "dataset": first["dataset"],
        "fid_extractor": first["fid_extractor"],
        "fid_count": first["fid_count"],
        "real_vs_real": first["real_vs_real"],
        "cloud_recipe": first.get("cloud_recipe"),
        "headline": agg,
    }
    claims = _claims(runs, tasks)
    write_json(RunFiles(out).summary, summary)
    write_json(out / "claims.json", claims)
    figs = _figures(out, runs, agg, tasks)
    _report(out, summary, claims, figs)
    return summary


def _report(out: Path, summary: dict, claims: list[dict], figs: list[tuple[str, Path]]) -> Path:
    import base64

    n, ext = summary["fid_count"], summary["fid_extractor"]
    parts = [
        f"<h1>baim sweep — preset {html.escape(summary['preset'])}, seeds {summary['seeds']}</h1>",
        f"<p>Every number is the mean ± std over {len(summary['seeds'])} training seeds (each seed: its own "
        f"layout, edge training, BAIM, deployment). FID/KID: <b>{html.escape(ext)}</b> features, {n} generated "
        "vs n real test images; <i>fitted</i> = z from a Gaussian fitted to the model's own training codes, "
        "<i>N(0,I)</i> = standard normal; each comparison uses one procedure on both sides.</p>",
        "<h2>Claims</h2><table><tr><th>claim</th><th>paper</th><th>holds</th><th>seeds</th></tr>",
    ]
    for c in claims:
        colour = "#2a2" if c["holds"] else "#c22"
        parts.append(
            f"<tr><td>{html.escape(c['claim'])}</td><td>{html.escape(c['paper'])}</td>"
            f"<td style='color:{colour}'><b>{'yes' if c['holds'] else 'no'}</b></td>"
            f"<td>{c['holds_on_seeds']} of {c['seeds']}</td></tr>"
        )
    parts.append("</table>")
    for title, path in figs:
        img = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<figure><figcaption><b>{html.escape(title)}</b></figcaption><img src='{img}'></figure>")
    parts.append("<h2>Headline numbers</h2><table><tr><th>number</th><th>mean</th><th>std</th><th>per seed</th></tr>")
    for k, v in summary["headline"].items():
        parts.append(
            f"<tr><td>{html.escape(k)}</td><td>{v['mean']:.4g}</td><td>{v['std']:.2g}</td>"
            f"<td>{', '.join(f'{x:.4g}' for x in v['per_seed'])}</td></tr>"
        )
    parts.append("</table>")
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px}"
        "img{max-width:100%}"
    )
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>baim sweep</title><style>{style}</style>"
        f"</head><body>{''.join(parts)}</body></html>"
    )
    return write_text(RunFiles(out).report, doc)


def sweep(out: str | Path, base: RunConfig, seeds: list[int]) -> dict:
    """Run ``base`` once per seed into ``out/seed-N`` (resumable), then :func:`aggregate`."""
    from dataclasses import replace

    out = Path(out)
    runs = {s: run(out / f"seed-{s}", replace(base, seed=s)) for s in seeds}
    return aggregate(out, runs)
