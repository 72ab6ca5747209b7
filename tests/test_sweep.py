"""The sweep's aggregation and claims, on hand-made run summaries (no training)."""

import json

import pytest

from baim.sweep import aggregate, headline

TASKS = ("tops", "footwear")


def _metrics(loss, fid):
    return {
        "test_loss": loss,
        "fid_fitted": fid,
        "fid_standard": fid * 2,
        "kid_fitted": fid / 1000,
        "fid_real_vs_real": 5.0,
        "kid_real_vs_real": 0.001,
        "fid_count": 50,
    }


def _summary(seed, finetune=0.02, freeze=0.03, scratch=0.025, deployed_loss=0.02, personalized_fid=90.0):
    strategies = {}
    for name, loss in (("finetune", finetune), ("freeze", freeze), ("scratch", scratch)):
        per_task = {t: _metrics(deployed_loss if name == "finetune" else loss, 80.0) for t in TASKS}
        strategies[name] = {
            "final_test_loss": loss,
            "per_task": per_task,
            "step0": {t: _metrics(0.04, 150.0) for t in TASKS},
            "curve": [{"epoch": 1, "test_loss_mean": loss * 2}, {"epoch": 2, "test_loss_mean": loss}],
        }
    edges = []
    for e, t in enumerate(TASKS * 2):
        edges.append(
            {
                "edge": e,
                "task": t,
                "models": {
                    "initial": _metrics(0.03 + 0.001 * e, 100.0),
                    "deployed": _metrics(deployed_loss, 80.0),
                    "personalized": _metrics(0.025, personalized_fid),
                },
            }
        )
    return {
        "preset": "t",
        "dataset": "fashion-mnist",
        "seed": seed,
        "fid_extractor": "domain",
        "fid_count": 50,
        "real_vs_real": {t: {"fid": 5.0, "kid": 0.001} for t in TASKS},
        "cloud_recipe": "gentle",
        "strategies": strategies,
        "edges": edges,
        "wall_seconds": 1.0,
        "partition": {"max_abs_diff": 0.0, "source_strategy": "finetune"},
    }


def test_claims_hold_only_when_every_seed_agrees(tmp_path):
    runs = {0: _summary(0), 1: _summary(1, finetune=0.028, deployed_loss=0.035)}  # seed 1: finetune not best
    summary = aggregate(tmp_path, runs)
    every = json.loads((tmp_path / "claims.json").read_text())

    def claim(prefix):
        (found,) = [c for c in every if c["claim"].startswith(prefix)]
        return found

    best = claim("finetune reaches the lowest")
    assert best["holds"] is False and best["holds_on_seeds"] == 1 and best["seeds"] == 2
    assert claim("freeze ends worst")["holds"] is True
    deployed = claim("each task's deployed model has a lower test loss")
    assert deployed["holds"] is False and deployed["holds_on_seeds"] == 1  # 0.035 > best edge 0.030 on seed 1
    personal = [c for c in every if c["claim"].startswith("personalised beats initial")]
    assert all(c["holds"] for c in personal) and len(personal) == 2  # both procedures, never mixed
    agg = summary["headline"]["strategy/finetune/final_test_loss"]
    assert agg["per_seed"] == [0.02, 0.028] and agg["mean"] == pytest.approx(0.024)
    assert agg["std"] == pytest.approx(0.005657, rel=1e-3)
    assert (tmp_path / "report.html").stat().st_size > 5000 and (tmp_path / "figures" / "strategies.png").is_file()


def test_a_sweep_refuses_runs_whose_baim_was_not_scored(tmp_path):
    from baim.errors import ConfigError

    unscored = _summary(1)
    for r in unscored["strategies"].values():
        r |= {"per_task": {}, "step0": {}, "final_test_loss": None}
    with pytest.raises(ConfigError, match=r"seeds \[1\].*cloud_evaluation true"):
        aggregate(tmp_path, {0: _summary(0), 1: unscored})
    assert not (tmp_path / "report.html").exists()


def test_headline_counts_personalised_wins_per_procedure():
    h = headline(_summary(0, personalized_fid=120.0))  # worse than initial (100) with fitted sampling
    assert h["personalized_beats_initial/fitted/fraction"] == 0.0
    assert h["personalized_beats_initial/standard/fraction"] == 0.0
    assert h["edges/tops/initial/test_loss/best"] == pytest.approx(0.03)
