"""``baim study``: budgets, paired bootstrap intervals, and (integration) the command end to end
with a resume."""

import json
import os

import numpy as np
import pytest

from baim.errors import ConfigError
from baim.presets import get_preset
from baim.study import CONVERGED, parse_budgets
from baim.study.paired import bootstrap, paired_differences
from baim.study.runner import match_bytes, own_keys


def test_budgets_parse_into_fixed_and_converged_settings():
    fixed, conv = parse_budgets("4,converged", cap=20, patience=2)
    assert (fixed.name, conv.name) == ("4", CONVERGED)
    quick = get_preset("quick")
    s = fixed.settings(quick)
    assert (s.central_epochs, s.rounds, s.patience) == (4, 4 + quick.personalize.epochs, 0)
    c = conv.settings(quick)
    assert (c.central_epochs, c.rounds, c.sl_epochs, c.patience) == (20, 20, 20, 2)
    assert (s.curve_every, c.curve_every) == (1, 5)  # a converging curve is scored every 5th round
    converging = {"epochs": 20, "patience": 2}
    off = {"curve_test_per_task": 0, "cloud_evaluation": False}  # no test curves, BAIM not scored
    assert conv.overrides() == {"edge": converging, "cloud": converging} | off  # the BAIM's cloud training too
    at_four = quick.with_overrides(**fixed.overrides())
    assert (at_four.edge.epochs, at_four.curve_ids([5, 6, 7])) == (4, None)
    assert quick.curve_ids(list(range(300))) == list(range(200))  # the preset's 200 test images a task


@pytest.mark.parametrize("text", ["", "0", "four", "4,4", "converged,converged"])
def test_bad_budgets_are_refused(text):
    with pytest.raises(ConfigError, match="budget"):
        parse_budgets(text)


def test_bootstrap_interval_brackets_the_mean_and_excludes_zero_for_a_clear_difference():
    rng = np.random.default_rng(1)
    clear = bootstrap([rng.normal(-1.0, 0.1, 6) for _ in range(3)])
    assert clear["ci_low"] < clear["mean"] < clear["ci_high"] < 0 and clear["n"] == 18
    noise = bootstrap([rng.normal(0.0, 1.0, 6) for _ in range(3)])
    assert noise["ci_low"] < 0 < noise["ci_high"]
    assert np.isnan(bootstrap([])["mean"])


def test_bootstrap_matches_the_plain_hierarchical_resampling_it_vectorises():
    """Seeds with replacement, then edges within each drawn seed, pooled: the same interval
    (to resampling noise) as a loop that does exactly that, groups of unequal size included."""
    rng = np.random.default_rng(3)
    groups = [rng.normal(0.01 * i, 0.02, n) for i, n in enumerate([5, 9, 12])]
    loop = np.random.default_rng(5)
    means = []
    for _ in range(20000):
        picked = [groups[j] for j in loop.integers(3, size=3)]
        means.append(np.mean(np.concatenate([g[loop.integers(len(g), size=len(g))] for g in picked])))
    fast = bootstrap(groups, resamples=20000, seed=7)
    assert fast["ci_low"] == pytest.approx(np.percentile(means, 2.5), abs=1e-3)
    assert fast["ci_high"] == pytest.approx(np.percentile(means, 97.5), abs=1e-3)
    assert fast["mean"] == pytest.approx(np.mean(np.concatenate(groups)))


def test_paired_differences_pair_edges_of_the_same_seed():
    def cell(vals, total):
        return {"per_edge": [{"edge": e, "nll_bpd": v} for e, v in vals.items()], "bytes_up": total}

    baim = {0: cell({0: 1.0, 1: 2.0}, 10), 1: cell({0: 1.5, 1: 2.5}, 30)}
    other = {0: cell({1: 2.5, 0: 1.25}, 40), 1: cell({0: 2.0, 1: 3.0}, 50), 2: cell({0: 0.0, 1: 0.0}, 0)}
    d = paired_differences(baim, other, ("nll_bpd",), ("bytes_up",))
    assert d["nll_bpd"]["mean"] == pytest.approx(np.mean([-0.25, -0.5, -0.5, -0.5]))
    assert d["nll_bpd"]["n"] == 4  # seed 2 has no baim cell: not paired
    assert d["bytes_up"]["mean"] == pytest.approx(-25.0) and d["bytes_up"]["ci_high"] <= -20.0


def test_own_test_metrics_are_paired_only_where_every_edge_has_them():
    with_own = {"per_edge": [{"edge": 0, "own_nll_bpd": 1.0, "own_mse": 0.1}, {"edge": 1, "own_nll_bpd": 2.0}]}
    assert own_keys([with_own]) == ("own_nll_bpd",)  # edge 1 lacks own_mse
    assert own_keys([with_own, {"per_edge": [{"edge": 0}]}]) == ()  # a cell from before own test sets
    assert own_keys([]) == ()


def test_bytes_to_match_come_from_scored_rounds_with_the_range_unscored_rounds_leave():
    """A curve scored every few rounds: the match is the first scored round at or below baim's
    nll, and the scored round before it (which was not) bounds it from below; a one-shot method
    matches with its own bytes or not at all."""
    (b,) = parse_budgets("converged")
    baim = {"method": "baim", "budget": "converged", "seed": 0, "nll_bpd": 3.70, "bytes_up": 10, "bytes_down": 20}
    rounds = [{"round": 1, "bytes_cum": 100, "nll_bpd": 3.9}, {"round": 2, "bytes_cum": 200}]
    rounds += [{"round": 5, "bytes_cum": 500, "nll_bpd": 3.75}, {"round": 10, "bytes_cum": 1000, "nll_bpd": 3.69}]
    fedavg = {"method": "fedavg", "budget": "converged", "seed": 0, "nll_bpd": 3.6, "rounds": rounds}
    every = {"method": "fd", "budget": "converged", "seed": 0, "nll_bpd": 3.6, "rounds": rounds[:1]}
    every["rounds"] = every["rounds"] + [{"round": 2, "bytes_cum": 200, "nll_bpd": 3.6}]
    one_shot = {"method": "kd", "budget": "converged", "seed": 0, "nll_bpd": 3.71, "bytes_up": 5, "bytes_down": 5}
    got = {x["method"]: x for x in match_bytes([baim, fedavg, every, one_shot], [b])}
    assert got["fedavg"]["bytes_to_match_baim_nll"] == 1000 and got["fedavg"]["bytes_not_yet_matched"] == 500
    assert got["fd"]["bytes_to_match_baim_nll"] == 200 and "bytes_not_yet_matched" not in got["fd"]  # adjacent
    assert got["kd"]["bytes_to_match_baim_nll"] is None and got["fedavg"]["baim_bytes"] == 30


def test_study_md_says_what_each_cell_cost_and_what_a_seed_costs_in_all():
    from baim.study.report import markdown

    def cell(method, seed, wall):
        zero = dict.fromkeys(("nll_bpd", "mse", "fid", "kid", "bytes_up", "bytes_down", "edge_flops", "cloud_flops"), 0)
        return {"method": method, "budget": "4", "seed": seed, "wall_s": wall, "per_edge": [], **zero}

    cells = [cell("baim", 0, 600), cell("baim", 1, 900), cell("fedavg", 0, 120), cell("fedavg", 1, None)]
    result = {
        "preset": "smoke",
        "seeds": [0, 1],
        "budgets": ["4"],
        "converged": {"patience": 3, "cap": 100},
        "methods": ["baim", "fedavg"],
        "cells": cells,
        "paired": [],
    }
    md = markdown(result)
    assert "| 4 | baim | 2 | 12.5 | 10.0 | 15.0 |" in md
    assert "| 4 | fedavg | 1 | 2.0 | 2.0 | 2.0 |" in md  # a cell without a recorded wall clock is left out
    assert "- budget 4: 27 min of cells in all (seed 0: 12, seed 1: 15)" in md


@pytest.mark.integration
def test_study_on_smoke_end_to_end_and_resumes(tmp_path):
    from baim.cli import main

    out = tmp_path / "study"
    # one budget (converged, tiny cap): one workflow run; the fixed-budget cells are compare's, tested there
    args = ["study", "--preset", "smoke", "--seeds", "0", "--budgets", "converged", "--cap", "2", "--patience", "1"]
    args += ["--methods", "baim,local,cloud_only", "--out", str(out)]
    assert main(args) == 0
    result = json.loads((out / "study.json").read_text())
    assert not result["missing"] and len(result["cells"]) == 3
    for c in result["cells"]:
        for k in ("nll_bpd", "mse", "fid", "kid", "bytes_up", "bytes_down", "edge_flops", "cloud_flops"):
            assert np.isfinite(c[k]), (c["method"], k)
    keys = {(p["method"], p["budget"], p["metric"]) for p in result["paired"]}
    assert ("cloud_only", CONVERGED, "nll_bpd") in keys and ("local", CONVERGED, "bytes_up") in keys
    assert all({"mean", "ci_low", "ci_high"} <= set(p) for p in result["paired"])
    baim = next(c for c in result["cells"] if c["method"] == "baim")
    assert set(baim["settings"]["delivered"]) == {str(r["edge"]) for r in baim["per_edge"]}  # what each edge got
    assert "What baim's delivery sent" in (out / "study.md").read_text()
    # which cloud recipe baim ran with, per budget (the default here)
    assert result["cloud_recipe"] == {CONVERGED: {"cloud_recipe": "gentle", "gate_init_from_screening": True}}
    assert "baim's cloud recipe: converged: gentle" in (out / "study.md").read_text()
    # every method is scored on each edge's own test set (its class mix) too, and paired there
    for c in result["cells"]:
        assert np.isfinite(c["own_nll_bpd"]) and all(np.isfinite(r["own_mse"]) for r in c["per_edge"])
    assert ("local", CONVERGED, "own_nll_bpd") in keys and ("cloud_only", CONVERGED, "own_mse") in keys
    assert "own test set" in (out / "study.md").read_text()
    # the converged edges validated after every epoch and stopped within the cap
    edge = out / "seed-0" / "budget-converged" / "baim" / "edges" / "edge-0" / "initial" / "metrics.json"
    epochs = json.loads(edge.read_text())["train"]["epochs"]
    assert 1 <= len(epochs) <= 2 and "val_loss" in epochs[0]
    # so did the BAIM's cloud training, on the common data's validation part
    cloud_log = out / "seed-0" / "budget-converged" / "baim" / "cloud" / "baim-finetune" / "log.json"
    curve = json.loads(cloud_log.read_text())
    assert 1 <= len(curve["curve"]) <= 2 and all("val_loss" in r for r in curve["curve"])
    # how each cell's early-stopped trainings ended; with a cap of 2 and patience 1 some run to the cap
    stops = {c["method"]: c["stopping"]["by_patience"] + c["stopping"]["at_cap"] for c in result["cells"]}
    assert stops["cloud_only"] > 0 and stops["local"] == 0  # local's models are the workflow's uploads: baim's cell
    baim_stops = baim["stopping"]
    assert baim_stops["at_cap"] + baim_stops["by_patience"] >= len(baim["per_edge"]) + 1  # edges and the BAIM
    assert (
        "ran to the cap (2)" in (out / "study.md").read_text() or "before the cap (2)" in (out / "study.md").read_text()
    )
    for f in ("quality_vs_bytes.png", "quality_vs_edge_flops.png"):
        assert (out / "figures" / f).stat().st_size > 1000
    # resume: a deleted cell is measured again, the others are read back untouched
    cells = sorted(out.glob("seed-0/budget-*/methods/*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in cells}
    gone = out / "seed-0" / "budget-converged" / "methods" / "cloud_only.json"
    gone.unlink()
    assert main(args) == 0
    assert gone.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != gone)
    assert not json.loads((out / "study.json").read_text())["missing"]
    assert os.path.getsize(out / "study.md") > 0


def test_units_keep_baims_dependents_with_it_and_the_teachers_together():
    from baim.study import STUDY_METHODS
    from baim.study.parallel import units

    got = units(STUDY_METHODS)
    assert ("baim", "local", "broadcast", "broadcast_budget", "broadcast_keep", "ensemble_distill") in got
    assert ("central", "kd") in got and ("cloud_only",) in got and ("fedavg", "fedavg_ft") in got
    assert sorted(m for u in got for m in u) == sorted(STUDY_METHODS)  # every method once
    assert got[0] == ("central", "kd") and got[-1] == ("cloud_only",)  # the longest first, the shortest last
    assert units(("kd", "fd")) == [("fd",), ("kd",)]  # a worker's subset: no baim to wait for
    assert units(("fedavg_ft", "sl")) == [("sl",), ("fedavg_ft",)]  # alone, the variant runs its own rounds


def test_a_seeds_longest_budgets_go_to_the_workers_first():
    from baim.study.runner import longest_first

    order = sorted(parse_budgets("4,converged,8"), key=longest_first)
    assert [b.name for b in order] == [CONVERGED, "8", "4"]


@pytest.mark.integration
def test_study_in_two_workers_writes_every_cell_once(tmp_path):
    from baim.cli import main

    out = tmp_path / "study"
    args = ["study", "--preset", "smoke", "--seeds", "0", "--budgets", "converged", "--cap", "2", "--patience", "1"]
    args += ["--methods", "baim,local,cloud_only", "--out", str(out), "--jobs", "2"]
    assert main(args) == 0
    result = json.loads((out / "study.json").read_text())
    assert not result["missing"] and {c["method"] for c in result["cells"]} == {"baim", "local", "cloud_only"}
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert logs == ["seed-0-budget-converged-baim+local.log", "seed-0-budget-converged-cloud_only.log"]
    assert "What baim's delivery sent" in (out / "study.md").read_text()
