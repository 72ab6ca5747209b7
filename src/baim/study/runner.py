"""Run the study: for each seed one layout, for each budget every method on it, one cell per
(seed, budget, method).

Resumable: a cell is ``DIR/seed-S/budget-B/methods/METHOD.json``, written atomically once the
method is measured (baim's workflow run in ``DIR/seed-S/budget-B/baim`` resumes too), so a
killed study reruns only what is missing. Seeds run in the order given, so partial results
cover whole seeds. ``DIR/study.json`` and ``DIR/study.md`` and the figures are rewritten after
every cell from what is there.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_json
from ..compare.common import QUALITY_KEYS
from ..compare.runner import METHODS, make_context, method_cell
from ..config import RunConfig
from ..errors import ConfigError
from ..metrics import get_extractor
from ..runfiles import RunFiles
from .budget import Budget
from .paired import paired_differences
from .parallel import run_parallel, units
from .tune import check_convergence, load_tuned, load_tuned_settings

# the set first (controls early: they are cheap and reuse baim's uploads), then FedAvg
# fine-tuned on the common data (from a copy of FedAvg's rounds: a few minutes). Not by default:
# ``fedavg_large``, FedAvg at each task's largest tier (above what baim's delivery sends small
# edges, which fits 1.25x their upload), about 16 min a seed at ``converged`` on its own; name it
# in ``--methods`` (measured at a cap of 30: baim ahead by 0.0115 bits/dim, README).
STUDY_METHODS = (
    "baim",
    "local",
    "broadcast",
    "broadcast_budget",
    "broadcast_keep",
    "cloud_only",
    "ensemble_distill",
    "central",
    "kd",
    "fedavg",
    "fd",
    "sl",
    "fedavg_ft",
)
PER_EDGE = ("nll_bpd", "mse", "fid", "kid")
# the same likelihood and MSE on each edge's own test set (its class mix), in cells whose layout
# gave edges one; paired only where both sides have them
OWN = ("own_nll_bpd", "own_mse")
TOTALS = ("bytes_up", "bytes_down", "edge_flops", "cloud_flops")


Tuned = tuple[dict[str, Any], str | None]  # load_tuned's preset overrides and cloud recipe
TunedByBudget = dict[str, Tuned]  # per budget name: a cloud recipe may be chosen per budget


def cell_dir(out: Path, seed: int, budget: Budget) -> Path:
    return out / f"seed-{seed}" / f"budget-{budget.name}"


def _cell(row: dict, seed: int, budget: Budget) -> dict[str, Any]:
    """What study.json keeps of a method's row: the issue's numbers, per edge and in total."""
    per_edge = [
        {
            "edge": r["edge"],
            "task": r["task"],
            "nll_bpd": r["nll_bpd"],
            "mse": r["mse"],
            "fid": r["fid_fitted"],
            "kid": r["kid_fitted"],
        }
        | {k: r[k] for k in OWN if k in r}
        for r in row["per_edge"]
    ]
    out: dict[str, Any] = {"method": row["method"], "budget": budget.name, "seed": seed}
    out |= {k: float(np.mean([r[k] for r in per_edge])) for k in PER_EDGE + own_keys([{"per_edge": per_edge}])}
    out |= {k: int(row[k]) for k in TOTALS}
    out["settings"] = row.get("settings", {})
    out["wall_s"] = row.get("method_wall_s_with_evaluation")
    if "stopping" in row:  # cells measured since 2026-12-06
        out["stopping"] = row["stopping"]
    out["per_edge"] = per_edge
    if row.get("rounds"):
        out["rounds"] = [
            {k: x[k] for k in ("round", "bytes_cum", "nll_bpd", "test_loss") if k in x} for x in row["rounds"]
        ]
    return out


def own_keys(cells: list[dict]) -> tuple[str, ...]:
    """The ``OWN`` metrics every edge row of every one of ``cells`` has."""
    rows = [r for c in cells for r in c["per_edge"]]
    return tuple(k for k in OWN if rows and all(k in r for r in rows))


def run_study(
    out: str | Path,
    preset: str,
    seeds: list[int],
    budgets: list[Budget],
    methods: tuple[str, ...] = STUDY_METHODS,
    data_dir: str | None = None,
    extractor: str = "domain",
    log: Any = None,
    jobs: int = 1,
    worker: bool = False,
    tuned: str | Path | None = None,
) -> dict[str, Any]:
    """Every cell not yet on disk, then ``study.json``/``study.md``/figures from all cells.
    ``jobs`` > 1: the cells in that many worker processes (:mod:`baim.study.parallel`);
    ``worker``: one such worker (its cells only; no pairing with baim, no report). ``tuned``:
    a ``tune.json`` whose per-tier rates (and cloud recipe, if it chose one) every cell runs
    with (:mod:`baim.study.tune`)."""
    out = Path(out)
    tuned_cfg = {b.name: load_tuned(tuned, b.name) if tuned else ({}, None) for b in budgets}
    if tuned and not worker:
        recipes = "; ".join(
            f"{b}: {r or 'gentle (not tuned)'}" + "".join(f", {k} {v}" for k, v in o.items() if k != "tier_lr")
            for b, (o, r) in tuned_cfg.items()
        )
        log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        log(f"--tuned {tuned}: the cloud's recipe per budget: {recipes}")
    tuned_settings = load_tuned_settings(tuned) if tuned else {}
    if tuned:
        check_convergence(tuned, budgets)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"unknown methods {bad}; choose from {', '.join(METHODS)}")
    if "baim" not in methods and not worker:
        raise ConfigError("the study pairs every method with baim: include baim in --methods")
    if not seeds:
        raise ConfigError("give at least one seed, e.g. --seeds 0,1,2")
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: give 1 or more worker processes")
    get_extractor(extractor)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out.mkdir(parents=True, exist_ok=True)
    _check_tuned(out, preset, seeds, budgets, tuned_cfg, tuned)
    _check_tuned_settings(out, seeds, budgets, tuned_settings, tuned)
    todo = [(s, b, m) for s in seeds for b in budgets for m in methods]
    done = sum((cell_dir(out, s, b) / "methods" / f"{m}.json").is_file() for s, b, m in todo)
    log(f"study {out}: {len(todo)} cells, {done} done")
    if jobs > 1 and not worker:
        return _run_in_workers(out, preset, seeds, budgets, methods, data_dir, extractor, jobs, log, tuned, tuned_cfg)
    t_start, measured = time.perf_counter(), 0
    failed: list[dict] = []
    result: dict[str, Any] = {}
    for s in seeds:
        layouts = []
        for b in budgets:
            cfg = _config(preset, s, b, data_dir, extractor, tuned_cfg)
            d = cell_dir(out, s, b)
            ctx = None
            for m in methods:
                path = d / "methods" / f"{m}.json"
                if not path.is_file():
                    ctx = ctx or make_context(d, cfg, b.settings(cfg.resolved_preset()).with_weights(tuned_settings))
                    _drop_unmeasured_run(d, m, log)
                    t0 = time.perf_counter()
                    try:
                        row = method_cell(m, ctx, d)
                    except Exception:  # one failed cell must not lose an unattended study's others
                        failed.append({"seed": s, "budget": b.name, "method": m, "error": traceback.format_exc()})
                        log(f"seed {s} budget {b.name} {m} FAILED (left missing):\n{failed[-1]['error']}")
                        continue
                    measured += 1
                    done += 1
                    per = (time.perf_counter() - t_start) / measured
                    nll = np.mean([r["nll_bpd"] for r in row["per_edge"]])
                    left = per * (len(todo) - done) / 60
                    log(
                        f"[{done}/{len(todo)}] seed {s} budget {b.name} {m}: nll {nll:.4f} bpd, FID {row['fid']:.1f} "
                        f"({time.perf_counter() - t0:.0f} s; ~{left:.0f} min left at this pace)"
                    )
                    if not worker:
                        result = gather(out, preset, seeds, budgets, methods)
            layout = RunFiles(d).layout
            layouts.append(json.loads(layout.read_text()) if layout.is_file() else None)
        _check_one_layout(s, [x for x in layouts if x is not None])
    if worker:
        return {"failed": failed}
    result = gather(out, preset, seeds, budgets, methods)
    if failed:
        result["failed"] = failed
        write_json(out / "study.json", result)
    return result


def _run_in_workers(
    out: Path,
    preset: str,
    seeds: list[int],
    budgets: list[Budget],
    methods: tuple[str, ...],
    data_dir: str | None,
    extractor: str,
    jobs: int,
    log: Any,
    tuned: str | Path | None = None,
    tuned_cfg: TunedByBudget | None = None,
) -> dict[str, Any]:
    """The missing cells in ``jobs`` worker processes; each seed's layout is made here first
    (once, before any worker reads it), and every budget of a seed checked to share it."""
    todo = []
    for s in seeds:
        layouts = []
        for b in budgets:
            d = cell_dir(out, s, b)
            cfg = _config(preset, s, b, data_dir, extractor, tuned_cfg)
            if not RunFiles(d).layout.is_file():
                make_context(d, cfg, b.settings(cfg.resolved_preset()))
            layouts.append(json.loads(RunFiles(d).layout.read_text()))
            for unit in units(methods):
                if any(not (d / "methods" / f"{m}.json").is_file() for m in unit):
                    todo.append((s, b, unit))
        _check_one_layout(s, layouts)
    todo.sort(key=lambda t: (seeds.index(t[0]), longest_first(t[1])))  # stable: units keep their order
    failed = run_parallel(
        out,
        preset,
        todo,
        jobs,
        data_dir,
        extractor,
        log,
        lambda: gather(out, preset, seeds, budgets, methods),
        tuned,
    )
    result = gather(out, preset, seeds, budgets, methods)
    if failed:
        result["failed"] = failed
        write_json(out / "study.json", result)
    return result


def longest_first(budget: Budget) -> tuple[int, int]:
    """Sort key of a seed's budgets for the workers: converged first, then fixed budgets by
    their epochs, most first (see :mod:`baim.study.parallel` on why the longest go first)."""
    return (0, 0) if budget.epochs is None else (1, -budget.epochs)


def _config(
    preset: str, seed: int, budget: Budget, data_dir: str | None, extractor: str, tuned: TunedByBudget | None
) -> RunConfig:
    """A cell's run config: the budget's overrides, and what ``baim tune`` chose (for that
    budget) where given."""
    overrides, recipe = (tuned or {}).get(budget.name, ({}, None))
    return RunConfig(
        preset=preset,
        seed=seed,
        data_dir=data_dir,
        fid_extractor=extractor,
        cloud_recipe=recipe or "gentle",
        overrides=budget.overrides() | overrides,
    )


# the preset fields a tuning may change (budgets change only epochs and patience)
TUNED_FIELDS = ("tier_lr", "gate_init_from_screening", "personalize")


def _check_tuned(
    out: Path,
    preset: str,
    seeds: list[int],
    budgets: list[Budget],
    tuned_cfg: TunedByBudget,
    tuned: str | Path | None,
) -> None:
    """A study folder holds one tuning: cells made with other rates or cloud recipe (or none)
    are not mixed with new ones (a cell's layout stores the preset it was made with)."""
    for s in seeds:
        for b in budgets:
            path = RunFiles(cell_dir(out, s, b)).layout
            if path.is_file():
                want = _config(preset, s, b, None, "domain", tuned_cfg).resolved_preset().to_dict()
                had = json.loads(path.read_text()).get("preset", {})
                differ = [k for k in TUNED_FIELDS if had.get(k, {} if k == "tier_lr" else None) != want[k]]
                if differ:
                    given = f"--tuned {tuned}" if tuned else "this call (no --tuned)"
                    raise ConfigError(
                        f"{out}: seed {s} budget {b.name} was made with other {', '.join(differ)} than {given} "
                        "asks for; use a new --out (or the same --tuned) so one study holds one tuning"
                    )
                edge = had.get("edge", {})
                rule = (edge.get("epochs"), edge.get("patience"))
                if b.epochs is None and rule != (b.cap, b.patience):  # converged cells of another cap
                    raise ConfigError(
                        f"{out}: seed {s}'s converged cells were made with cap {rule[0]}, patience {rule[1]}; "
                        f"this call asks for cap {b.cap}, patience {b.patience}: use a new --out (or the same "
                        "--cap and --patience) so one study holds one convergence rule"
                    )


def _check_tuned_settings(
    out: Path, seeds: list[int], budgets: list[Budget], settings: dict[str, float], tuned: str | Path | None
) -> None:
    """Neither are ``kd`` or ``fd`` cells made with other distillation weights than this call's
    (a cell's row stores the weight it ran with; one made before KD's weight was a setting ran
    with its default)."""
    from .tune_distill import WEIGHTS

    for s in seeds:
        for b in budgets:
            for method, (field, default) in WEIGHTS.items():
                path = cell_dir(out, s, b) / "methods" / f"{method}.json"
                if path.is_file():
                    had = json.loads(path.read_text()).get("settings", {}).get(field, default)
                    if had != settings.get(field, default):
                        given = f"--tuned {tuned}" if tuned else "this call (no --tuned)"
                        raise ConfigError(
                            f"{out}: seed {s} budget {b.name} {method} ran with {field} {had:g}, not that of {given}; "
                            "give a fresh --out for another tuning"
                        )


def _drop_unmeasured_run(d: Path, method: str, log: Any) -> None:
    """A baim workflow run killed before its measurements were written cannot be resumed into
    an honest cell (its meters and byte ledger live in the process that died: the resumed part
    alone would be counted), so it starts over."""
    run = d / "baim"
    if method == "baim" and run.is_dir() and not RunFiles(run).compare_measure.is_file():
        log(f"{run}: a workflow run stopped before it was measured; starting it over")
        shutil.rmtree(run)


def _check_one_layout(seed: int, layouts: list[dict]) -> None:
    """Every budget of a seed ran on the same layout (same slices, validation and test sets)."""
    keys = ("edges", "cloud", "cloud_val", "test")
    if any({k: x.get(k) for k in keys} != {k: layouts[0].get(k) for k in keys} for x in layouts[1:]):
        raise ConfigError(f"seed {seed}: the budgets' layouts differ; delete the seed's folders and rerun")


def gather(out: Path, preset: str, seeds: list[int], budgets: list[Budget], methods: tuple[str, ...]) -> dict[str, Any]:
    """study.json from the cells on disk (and study.md, figures)."""
    cells = []
    for s in seeds:
        for b in budgets:
            for m in methods:
                path = cell_dir(out, s, b) / "methods" / f"{m}.json"
                if path.is_file():
                    cells.append(_cell(json.loads(path.read_text()), s, b))
    layouts = [RunFiles(cell_dir(out, s, b)).layout for s in seeds for b in budgets]
    paired = []
    for b in budgets:
        by = {m: {c["seed"]: c for c in cells if c["method"] == m and c["budget"] == b.name} for m in methods}
        for m in methods:
            if m == "baim" or not by[m] or not by["baim"]:
                continue
            keys = PER_EDGE + own_keys([*by["baim"].values(), *by[m].values()])
            diffs = paired_differences(by["baim"], by[m], keys, TOTALS)
            for metric, v in diffs.items():
                paired.append(
                    {
                        "method": m,
                        "budget": b.name,
                        "metric": metric,
                        **v,
                        "seeds": sorted(set(by["baim"]) & set(by[m])),
                    }
                )
    result = {
        "preset": preset,
        "seeds": seeds,
        "budgets": [b.name for b in budgets],
        "converged": {"cap": budgets[0].cap, "patience": budgets[0].patience},
        "tier_lr": next((json.loads(p.read_text())["preset"].get("tier_lr", {}) for p in layouts if p.is_file()), {}),
        "cloud_recipe": _cloud_recipes(out, seeds, budgets),
        "methods": list(methods),
        "definitions": {
            "nll_bpd": "IWAE bound (k = 64) on the test negative log-likelihood, bits per dimension, first 64 test "
            "images of the edge's task; mean over edges",
            "mse": "reconstruction MSE (z = mu) on the task's test set; mean over edges",
            "own_nll_bpd/own_mse": "the same on each edge's own test set (test images with the class mix of the "
            "edge's slice); in cells whose layout has one",
            "fid/kid": "fitted prior (each edge model's prior fitted to the edge's own images; a cloud-served model's "
            "to its training images), domain extractor; mean over edges",
            "bytes_up/down": "encoded message bytes, all edges, evaluation and inference left out",
            "edge_flops/cloud_flops": "torch flop counter, training and delivery, evaluation left out",
            "paired": "baim - method; mean over (seed, edge) pairs (totals: over seeds); 95 % hierarchical bootstrap "
            "(seeds, then edges within a seed), 2000 resamples; negative = baim lower (better for quality)",
        },
        "cells": cells,
        "paired": paired,
        "match": match_bytes(cells, budgets),
        "missing": [
            {"seed": s, "budget": b.name, "method": m}
            for s in seeds
            for b in budgets
            for m in methods
            if not (cell_dir(out, s, b) / "methods" / f"{m}.json").is_file()
        ],
        "quality_keys": list(QUALITY_KEYS),
    }
    write_json(out / "study.json", result)
    from .report import write_report

    write_report(out, result)
    return result


def _cloud_recipes(out: Path, seeds: list[int], budgets: list[Budget]) -> dict[str, Any]:
    """Per budget, the cloud recipe and gate setting baim's workflow ran with (from its run
    config and layout; one entry per distinct choice over the seeds, normally one)."""
    recipes: dict[str, Any] = {}
    for b in budgets:
        seen = []
        for s in seeds:
            run = RunFiles(cell_dir(out, s, b) / "baim")
            if run.config.is_file() and run.layout.is_file():
                preset = json.loads(run.layout.read_text()).get("preset", {})
                choice = {
                    "cloud_recipe": json.loads(run.config.read_text()).get("cloud_recipe", "gentle"),
                    "gate_init_from_screening": preset.get("gate_init_from_screening"),
                }
                if choice not in seen:
                    seen.append(choice)
        recipes[b.name] = seen[0] if len(seen) == 1 else seen
    return recipes


def match_bytes(cells: list[dict], budgets: list[Budget]) -> list[dict[str, Any]]:
    """Per budget, seed and method: the bytes at which the method first matches baim's mean
    ``nll_bpd`` (round-based methods: the first scored round that does, and where rounds
    between went unscored, the bytes of the scored round before, which did not; one-shot
    methods: their bytes if they match at all), or that it does not."""
    out = []
    for b in budgets:
        for c in cells:
            if c["budget"] != b.name or c["method"] == "baim":
                continue
            base = next(
                (x for x in cells if x["method"] == "baim" and x["budget"] == b.name and x["seed"] == c["seed"]), None
            )
            if base is None:
                continue
            target = base["nll_bpd"]
            hit = before = None
            scored = [r for r in c.get("rounds", []) if "nll_bpd" in r]
            for i, r in enumerate(scored):
                if r["nll_bpd"] <= target:
                    hit = r["bytes_cum"]
                    if i and scored[i - 1]["round"] < r["round"] - 1:  # unscored rounds between
                        before = scored[i - 1]["bytes_cum"]
                    break
            if hit is None and not c.get("rounds") and c["nll_bpd"] <= target:
                hit = c["bytes_up"] + c["bytes_down"]
            row = {
                "budget": b.name,
                "seed": c["seed"],
                "method": c["method"],
                "baim_bytes": base["bytes_up"] + base["bytes_down"],
                "bytes_to_match_baim_nll": hit,
            }
            if before is not None:  # matched somewhere after this many bytes, by ``hit``
                row["bytes_not_yet_matched"] = before
            out.append(row)
    return out
