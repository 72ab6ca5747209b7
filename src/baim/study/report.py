"""``study.md`` and the figures of ``baim study``: quality against bytes and against edge FLOPs,
baim drawn as a curve over budgets, every other method one point per budget (seed means)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text
from ..figures import pyplot, save_figure
from ..runfiles import RunFiles
from .budget import CONVERGED
from .runner import OWN  # each edge's own test set (its class mix), where cells have it

MB = 1e6


def _means(result: dict) -> dict[tuple[str, str], dict[str, float]]:
    out: dict[tuple[str, str], dict[str, float]] = {}
    for m in result["methods"]:
        for b in result["budgets"]:
            cs = [c for c in result["cells"] if c["method"] == m and c["budget"] == b]
            if cs:
                keys: tuple[str, ...] = ("nll_bpd", "mse", "fid", "kid", "bytes_up", "bytes_down", "edge_flops")
                keys += ("cloud_flops", *(k for k in OWN if all(k in c for c in cs)))
                out[(m, b)] = {k: float(np.mean([c[k] for c in cs])) for k in keys} | {"seeds": len(cs)}
    return out


def _recipes(by_budget: dict) -> str:
    """The cloud recipe baim ran with at each budget, as a sentence (none recorded: empty)."""
    parts = []
    for budget, c in by_budget.items():
        if isinstance(c, dict):
            gates = "" if c.get("gate_init_from_screening") is not False else ", even gates"
            parts.append(f"{budget}: {c['cloud_recipe']}{gates}")
        else:  # seeds that ran with different recipes
            parts.append(f"{budget}: mixed {c}")
    return (". baim's cloud recipe: " + "; ".join(parts)) if parts else ""


def markdown(result: dict) -> str:
    means = _means(result)
    lines = [
        f"# baim study: preset {result['preset']}, seeds {result['seeds']}, budgets {result['budgets']}",
        "",
        f"converged: early stopping on each method's own validation data, patience {result['converged']['patience']}, "
        f"cap {result['converged']['cap']}. Means over seeds of the means over edges. Edges' learning rate: "
        + (f"tuned per tier {result['tier_lr']} (`baim tune`)" if result.get("tier_lr") else "the preset's")
        + _recipes(result.get("cloud_recipe") or {}),
        "",
        "| budget | method | seeds | nll (bpd) | MSE | FID | KID | MB up | MB down | edge GFLOP | cloud GFLOP |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in result["budgets"]:
        for m in result["methods"]:
            v = means.get((m, b))
            if v is None:
                continue
            lines.append(
                f"| {b} | {m} | {v['seeds']:.0f} | {v['nll_bpd']:.4f} | {v['mse']:.5f} | {v['fid']:.1f} | "
                f"{v['kid']:.4f} | {v['bytes_up'] / MB:.3f} | {v['bytes_down'] / MB:.3f} | "
                f"{v['edge_flops'] / 1e9:.1f} | {v['cloud_flops'] / 1e9:.1f} |"
            )
    lines += _capped(result)
    lines += ["", "## Paired differences baim − method (95 % bootstrap; negative: baim lower)", ""]
    lines += [
        "| budget | method | Δ nll (bpd) | Δ FID | Δ MSE | baim better on (CI excludes 0) |",
        "|---|---|---|---|---|---|",
    ]
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for p in result["paired"]:
        pairs.setdefault((p["budget"], p["method"]), {})[p["metric"]] = p

    def fmt(p: dict) -> str:
        return f"{p['mean']:+.4g} [{p['ci_low']:+.4g}, {p['ci_high']:+.4g}]"

    for (b, m), ps in pairs.items():
        better = [k for k in ("nll_bpd", "fid", "mse", "kid") if ps[k]["ci_high"] < 0]
        worse = [k for k in ("nll_bpd", "fid", "mse", "kid") if ps[k]["ci_low"] > 0]
        verdict = ", ".join(better) or "none"
        if worse:
            verdict += f"; baim worse on {', '.join(worse)}"
        lines.append(f"| {b} | {m} | {fmt(ps['nll_bpd'])} | {fmt(ps['fid'])} | {fmt(ps['mse'])} | {verdict} |")
    own = [(b, m, ps) for (b, m), ps in pairs.items() if all(k in ps for k in OWN)]
    if own:
        lines += [
            "",
            "## On each edge's own test set (its class mix): paired differences baim − method",
            "",
            "| budget | method | Δ nll (bpd) | Δ MSE | baim better on (CI excludes 0) |",
            "|---|---|---|---|---|",
        ]
        for b, m, ps in own:
            better = [k for k in OWN if ps[k]["ci_high"] < 0]
            worse = [k for k in OWN if ps[k]["ci_low"] > 0]
            verdict = ", ".join(better) or "none"
            if worse:
                verdict += f"; baim worse on {', '.join(worse)}"
            lines.append(f"| {b} | {m} | {fmt(ps['own_nll_bpd'])} | {fmt(ps['own_mse'])} | {verdict} |")
    chosen = _deliveries(result)
    if chosen:
        lines += ["", "## What baim's delivery sent (edges, over seeds)", ""]
        lines += [f"- budget {b}: " + ", ".join(f"{k} {n}" for k, n in sorted(c.items())) for b, c in chosen.items()]
    if result.get("match"):
        lines += [
            "",
            "## Bytes to match baim's nll (per seed)",
            "",
            "A range: the curve was scored every few rounds; the method had not matched at the first "
            "number and had at the second.",
            "",
            "| budget | seed | method | MB to match | baim MB |",
        ]
        lines.append("|---|---|---|---|---|")
        for x in result["match"]:
            hit = x["bytes_to_match_baim_nll"]
            matched = "not matched" if hit is None else f"{hit / MB:.3f}"
            if "bytes_not_yet_matched" in x:  # the curve was scored every few rounds
                matched = f"{x['bytes_not_yet_matched'] / MB:.3f}–{matched}"
            lines.append(f"| {x['budget']} | {x['seed']} | {x['method']} | {matched} | {x['baim_bytes'] / MB:.3f} |")
    lines += _cost(result)
    if result.get("missing"):
        lines += ["", f"{len(result['missing'])} cells not measured yet (rerun the same command to resume)."]
    return "\n".join(lines) + "\n"


def _cost(result: dict) -> list[str]:
    """What the study cost, from each cell's own wall clock (its training and evaluation): per
    budget and method the minutes a cell took over seeds, and per budget the sum a seed takes.

    Why: the study's price decides how many seeds and budgets anyone can afford, and it is the
    number a time target is checked against; the cells already record it, so the report says it.
    A cell that reuses another's work (``local`` reads baim's run, ``kd`` central's teachers)
    counts only its own; cells that shared the cores with other processes ran slower."""
    cells = [c for c in result["cells"] if c.get("wall_s") is not None]
    if not cells:
        return []
    lines = [
        "",
        "## Cost: each cell's wall clock (training and evaluation), minutes",
        "",
        "Measured in the cell's own process; a cell that reuses another's work counts only its own, "
        "and cells that shared the cores with others ran slower than alone.",
        "",
        "| budget | method | seeds | mean | min | max |",
        "|---|---|---|---|---|---|",
    ]
    totals = []
    for b in result["budgets"]:
        per_seed: dict[int, float] = {}
        for m in result["methods"]:
            mine = [c for c in cells if c["budget"] == b and c["method"] == m]
            if mine:
                w = [c["wall_s"] / 60 for c in mine]
                lines.append(f"| {b} | {m} | {len(w)} | {np.mean(w):.1f} | {min(w):.1f} | {max(w):.1f} |")
            for c in mine:  # the seed's sum is the sum of the rows above
                per_seed[c["seed"]] = per_seed.get(c["seed"], 0.0) + c["wall_s"] / 60
        if per_seed:
            each = ", ".join(f"seed {s}: {v:.0f}" for s, v in sorted(per_seed.items()))
            totals.append(f"- budget {b}: {sum(per_seed.values()):.0f} min of cells in all ({each})")
    return [*lines, "", *totals]


def _capped(result: dict) -> list[str]:
    """At ``converged``: how many early-stopped trainings ran to the cap instead (not known to
    be converged), per method over seeds; cells measured before this was recorded are left out."""
    cells = [c for c in result["cells"] if c["budget"] == "converged" and "stopping" in c]
    if not cells:
        return []
    per: dict[str, list[int]] = {}
    for c in cells:
        n = per.setdefault(c["method"], [0, 0])
        n[0] += c["stopping"]["at_cap"]
        n[1] += c["stopping"]["at_cap"] + c["stopping"]["by_patience"]
    hit = [f"{m} {a} of {t}" for m, (a, t) in per.items() if a]
    cap = result["converged"]["cap"]
    # a cell counts the trainings its own process ran: not the phases a resumed workflow reused,
    # nor teachers another cell of the process had trained (kd after central)
    scope = "of the early-stopped trainings each cell ran itself (not phases it reused)"
    if not hit:
        return ["", f"At converged, every one {scope} stopped by its patience before the cap ({cap})."]
    return [
        "",
        f"At converged, {scope}, these ran to the cap ({cap}) instead of stopping by their patience (not known "
        f"to be converged): {', '.join(hit)}. A larger --cap would train them further.",
    ]


def _deliveries(result: dict) -> dict[str, dict[str, int]]:
    """Per budget, how many of baim's edges got each delivery candidate (cells that say)."""
    out: dict[str, dict[str, int]] = {}
    for c in result["cells"]:
        for cand in (c.get("settings") or {}).get("delivered", {}).values() if c["method"] == "baim" else ():
            out.setdefault(c["budget"], {}).setdefault(cand, 0)
            out[c["budget"]][cand] += 1
    return out


def figure(result: dict, x_key: str, path: Path) -> Path:
    """nll_bpd and FID against ``x_key`` (``bytes`` or ``edge_flops``), log x."""
    plt = pyplot()
    means = _means(result)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    markers = "os^vD<>ph*XP"
    for ax, key, label in ((axes[0], "nll_bpd", "test NLL bound (bits/dim)"), (axes[1], "fid", "FID (fitted prior)")):
        for i, m in enumerate(result["methods"]):
            pts = []
            for b in result["budgets"]:
                v = means.get((m, b))
                if v is None:
                    continue
                x = v["bytes_up"] + v["bytes_down"] if x_key == "bytes" else v["edge_flops"]
                pts.append((max(x, 1.0), v[key], b))
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            if m == "baim":
                ax.plot(xs, ys, "-*", markersize=12, color="black", label="baim (over budgets)")
                for x, y, b in pts:
                    ax.annotate(b, (x, y), fontsize=7)
            else:  # filled: a fixed budget; hollow: converged
                dots = ax.scatter(xs, ys, marker=markers[i % len(markers)], label=m)
                colour = dots.get_facecolor()[0]
                dots.set_facecolors([colour if b != CONVERGED else "none" for _, _, b in pts])
                dots.set_edgecolors([colour] * len(pts))
        ax.set_xscale("log")
        ax.set_xlabel("bytes up + down, all edges (log; 1 = none)" if x_key == "bytes" else "edge FLOPs (log)")
        ax.set_ylabel(label)
    # one legend for both panels, below them: inside a panel it covered the methods' points
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=min(7, len(handles)))
    what = "communication" if x_key == "bytes" else "edge compute"
    fig.suptitle(f"Quality against {what} (means over seeds; hollow: converged)")
    return save_figure(fig, path)


def write_report(out: Path, result: dict) -> None:
    write_text(out / "study.md", markdown(result))
    if result["cells"]:
        files = RunFiles(out)  # a study's figures go where a run's do
        figure(result, "bytes", files.figure("quality_vs_bytes.png"))
        figure(result, "edge_flops", files.figure("quality_vs_edge_flops.png"))
