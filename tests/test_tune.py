"""``baim tune``: per-tier learning rates chosen on validation data only, and every method
training a tier's model at the chosen rate (``Preset.tier_lr``)."""

import json

import pytest

from baim.compare.common import Context, Settings
from baim.config import RunConfig
from baim.errors import ConfigError
from baim.presets import get_preset
from baim.study.budget import parse_budgets
from baim.study.parallel import worker_command
from baim.study.runner import run_study
from baim.study.tune import load_tuned, parse_lrs, run_tune, summarise


def test_tier_lr_gives_a_tier_its_own_rate_and_leaves_the_others_alone():
    quick = get_preset("quick").with_overrides(tier_lr={"large": 0.002})
    assert quick.edge_recipe("large").lr == 0.002
    assert quick.edge_recipe("small").lr == quick.edge.lr == 0.005
    assert quick.edge_recipe(None) == quick.edge
    ctx = Context(RunConfig(), None, None, quick, Settings(rounds=1, local_epochs=1, sl_epochs=1, central_epochs=1))
    assert ctx.recipe(7, "large").lr == 0.002 and ctx.recipe(7, "small").lr == 0.005
    assert ctx.recipe(7, "large").patience == 0


@pytest.mark.parametrize(
    ("tier_lr", "match"),
    [({"huge": 0.01}, "does not use"), ({"large": 0.0}, "learning rates"), ({"large": True}, "learning rates")],
)
def test_bad_tier_lr_is_refused_with_what_is_allowed(tier_lr, match):
    with pytest.raises(ConfigError, match=match):
        get_preset("quick").with_overrides(tier_lr=tier_lr)


def test_a_run_config_carries_tier_lr_into_its_preset():
    cfg = RunConfig(preset="quick", overrides={"tier_lr": {"medium": 0.01}})
    assert cfg.resolved_preset().edge_recipe("medium").lr == 0.01


def _trials(vals):
    return [
        {"seed": s, "tier": tier, "lr": lr, "edge": e, "val_loss": v, "best_epoch": 5, "epochs": 8}
        for (s, tier, lr, e), v in vals.items()
    ]


def test_trials_still_improving_at_the_cap_are_counted_and_reported():
    """A trial that ran to the cap with its best epoch within its patience of it was stopped
    by the cap, not by early stopping: the report says the cap binds."""
    from baim.study.tune import at_cap, report

    trials = _trials({(0, "small", 0.002, 0): 0.02, (0, "small", 0.005, 0): 0.03, (0, "small", 0.005, 1): 0.03})
    trials[0] |= {"best_epoch": 30, "epochs": 30}  # the chosen rate's trial: still improving at 30
    trials[1] |= {"best_epoch": 27, "epochs": 30}  # stopped by its patience exactly at the cap
    assert at_cap(trials[0], 30, 3) and not at_cap(trials[1], 30, 3) and not at_cap(trials[2], 30, 3)
    r = summarise(trials, "quick", [0], (0.002, 0.005), 0.005, 30, 3)
    assert r["tiers"]["small"]["at_cap"] == {"0.002": 1, "0.005": 0}
    assert "The cap binds" in report(r) and "small 1 of 1" in report(r)
    trials[0] |= {"best_epoch": 20, "epochs": 23}
    assert "cap binds" not in report(summarise(trials, "quick", [0], (0.002, 0.005), 0.005, 30, 3))


def test_summarise_picks_the_lowest_mean_validation_loss_per_tier_and_pairs_it_with_the_default():
    vals = {
        (0, "large", 0.002, 0, 0.030),
        (0, "large", 0.002, 1, 0.032),
        (0, "large", 0.005, 0, 0.034),
        (0, "large", 0.005, 1, 0.031),
        (0, "small", 0.002, 2, 0.040),
        (0, "small", 0.005, 2, 0.030),
    }
    trials = _trials({k[:4]: k[4] for k in vals})
    r = summarise(trials, "quick", [0], (0.002, 0.005), 0.005, 30, 3)
    assert r["tiers"]["large"]["chosen"] == 0.002
    assert r["tiers"]["large"]["gain_vs_default"] == pytest.approx(((0.030 - 0.034) + (0.032 - 0.031)) / 2)
    assert r["tiers"]["large"]["better_on"] == 1 and r["tiers"]["large"]["pairs"] == 2
    assert r["tiers"]["small"]["chosen"] == 0.005
    assert r["tier_lr"] == {"large": 0.002}  # only tiers whose rate differs from the default


def test_a_tie_keeps_the_rate_nearer_the_default():
    trials = _trials({(0, "small", 0.001, 0): 0.03, (0, "small", 0.005, 0): 0.03, (0, "small", 0.01, 0): 0.03})
    assert summarise(trials, "quick", [0], (0.001, 0.005, 0.01), 0.005, 30, 3)["tier_lr"] == {}


@pytest.mark.parametrize("text", ["", "0", "0.01,0.01", "x", "1.5"])
def test_bad_candidate_rates_are_refused(text):
    with pytest.raises(ConfigError, match="--lrs"):
        parse_lrs(text)


def test_load_tuned_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="baim tune"):
        load_tuned(tmp_path / "missing.json")
    for bad in ("[1, 2]", '{"tier_lr": {}, "cloud": {"cloud_recipe": "harsh", "overrides": {}}}'):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(ConfigError, match="not a tune.json"):
            load_tuned(tmp_path / "bad.json")
    (tmp_path / "tune.json").write_text(json.dumps({"tier_lr": {"large": 0.002}}))
    assert load_tuned(tmp_path / "tune.json") == ({"tier_lr": {"large": 0.002}}, None)
    cloud = {"chosen": "even-gates", "cloud_recipe": "gentle", "overrides": {"gate_init_from_screening": False}}
    (tmp_path / "tune.json").write_text(json.dumps({"tier_lr": {}, "cloud": cloud}))
    assert load_tuned(tmp_path / "tune.json") == ({"gate_init_from_screening": False}, "gentle")


def test_study_workers_get_the_tuned_rates(tmp_path):
    (budget,) = parse_budgets("converged")
    cmd = worker_command(tmp_path, "quick", 0, budget, ("fedavg",), None, "domain", tmp_path / "tune.json")
    assert cmd[cmd.index("--tuned") + 1] == str(tmp_path / "tune.json")
    assert "--tuned" not in worker_command(tmp_path, "quick", 0, budget, ("fedavg",), None, "domain")


def _no_test_split(monkeypatch, module):
    from baim.data import load_dataset as real_load

    def no_test(name, data_dir=None):
        ds = real_load(name, data_dir)

        def refuse(*a, **k):
            raise AssertionError("tuning read the test split")

        monkeypatch.setattr(ds.test, "load", refuse)
        return ds

    monkeypatch.setattr(module, "load_dataset", no_test)


def test_tune_on_smoke_trains_every_trial_once_never_reads_test_data_and_resumes(tmp_path, monkeypatch):
    from baim.study import tune

    _no_test_split(monkeypatch, tune)
    r = run_tune(tmp_path, "smoke", (0,), (0.002,), cap=2, patience=1)
    edges = get_preset("smoke").num_edges
    assert len(r["trials"]) == 2 * edges  # 0.002 and the default 0.005, every edge (one tier)
    assert r["tiers"]["small"]["chosen"] in (0.002, 0.005)
    assert all(1 <= t["best_epoch"] <= t["epochs"] <= 2 for t in r["trials"])
    assert (tmp_path / "tune.md").read_text().startswith("# baim tune")

    def no_training(*a, **k):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(tune, "train_learner", no_training)
    again = run_tune(tmp_path, "smoke", (0,), (0.002,), cap=2, patience=1)
    assert again["tiers"] == r["tiers"]


def test_a_study_folder_refuses_cells_of_another_tuning(tmp_path):
    from baim.study.runner import _check_tuned, _config, cell_dir

    (budget,) = parse_budgets("4")
    d = cell_dir(tmp_path, 0, budget)
    d.mkdir(parents=True)
    tuned = {"4": ({"tier_lr": {"large": 0.002}}, None)}
    made = _config("quick", 0, budget, None, "domain", tuned).resolved_preset().to_dict()
    (d / "layout.json").write_text(json.dumps({"preset": made}))
    _check_tuned(tmp_path, "quick", [0], [budget], tuned, "t.json")  # the same tuning: fine
    with pytest.raises(ConfigError, match="tier_lr.*new --out"):
        _check_tuned(tmp_path, "quick", [0], [budget], {}, None)
    with pytest.raises(ConfigError, match="gate_init_from_screening, personalize"):
        _check_tuned(tmp_path, "quick", [0], [budget], {"4": ({"tier_lr": {"large": 0.002}}, "paper")}, "t.json")


def test_a_study_folder_refuses_converged_cells_of_another_cap(tmp_path):
    """Converged cells made under cap 30 must not be mixed with cap-100 ones on a rerun."""
    from baim.study.runner import _check_tuned, _config, cell_dir

    (old,) = parse_budgets("converged", cap=30, patience=3)
    d = cell_dir(tmp_path, 0, old)
    d.mkdir(parents=True)
    made = _config("quick", 0, old, None, "domain", {}).resolved_preset().to_dict()
    (d / "layout.json").write_text(json.dumps({"preset": made}))
    _check_tuned(tmp_path, "quick", [0], [old], {}, None)  # the same rule: fine
    with pytest.raises(ConfigError, match="made with cap 30, patience 3.*cap 100.*new --out"):
        _check_tuned(tmp_path, "quick", [0], parse_budgets("converged"), {}, None)


def test_cloud_tuning_runs_each_variant_at_the_chosen_rates_and_picks_what_the_edges_keep(tmp_path, monkeypatch):
    """The score is the validation loss of the model each edge keeps (after personalisation),
    not of what the delivery sent: here even-gates sends the best models and gentle's edges
    end best, and gentle is chosen."""
    import baim.engines
    from baim.study import tune
    from baim.study.tune import Stage, tune_cloud

    seen = []
    sent = {"gentle": 0.03, "paper": 0.05, "even-gates": 0.02}
    kept = {"gentle": 0.025, "paper": 0.06, "even-gates": 0.04}

    def variant(folder):
        return folder.parent.name.removeprefix("cloud-")

    def fake_run(out, cfg):
        seen.append((out.parent.name, cfg.cloud_recipe, cfg.resolved_preset()))
        edges = [{"edge": e, "delivery": {"val_loss": sent[variant(out)] + 0.001 * e}} for e in range(3)]
        return {"edges": edges, "strategies": {"finetune": {"curve": [{"val_loss": 0.1}, {"val_loss": 0.09}]}}}

    def fake_kept(folder, ds, seed):
        losses = {e: kept[variant(folder)] + 0.001 * e for e in range(3)}
        if variant(folder) == "paper" and folder.name == "seed-1":  # an edge that kept no model
            del losses[2]
        return losses

    monkeypatch.setattr(baim.engines, "run", fake_run)
    monkeypatch.setattr(tune, "kept_val_losses", fake_kept)
    stage = Stage(tmp_path, "quick", (0, 1), 30, 3, {"large": 0.002}, log=lambda m: None)
    r = tune_cloud(stage, ("gentle", "paper", "even-gates"))
    assert r["chosen"] == "gentle" and r["cloud_recipe"] == "gentle" and r["overrides"] == {}
    # seed 0 over all three edges; seed 1 over the two every variant kept a model on
    assert r["variants"]["paper"]["val_loss"] == pytest.approx((0.061 + 0.0605) / 2)
    assert [s["unscored"] for s in r["variants"]["gentle"]["seeds"]] == [[], [2]]
    assert r["variants"]["even-gates"]["seeds"][1]["delivered_val_loss"] == pytest.approx(0.0205)  # recorded beside
    assert r["variants"]["gentle"]["seeds"][0]["baim_val_loss"] == 0.09
    assert len(seen) == 6
    for name, recipe, preset in seen:  # every variant converging, at the chosen rates
        assert preset.edge_recipe("large").lr == 0.002 and preset.cloud.patience == 3
        assert (recipe == "paper") == (name == "cloud-paper")
        assert preset.gate_init_from_screening == (name == "cloud-gentle")
    assert "| gentle | 0.02575 |" in tune.report({**_summary_stub(), "cloud_by_budget": {"converged": r}})
    with pytest.raises(ConfigError, match="--cloud"):
        run_tune(tmp_path, "smoke", (0,), (0.002,), cloud=("harsh",))


def _summary_stub():
    """The rate part of a tune.json, for the report."""
    head = {"preset": "quick", "seeds": [0], "lrs": [0.005], "default_lr": 0.005}
    return head | {"converged": {"cap": 30, "patience": 3}, "tiers": {}, "tier_lr": {}}


@pytest.mark.integration
def test_distill_tuning_runs_kd_and_fd_on_validation_only_picks_the_lowest_and_resumes(tmp_path, monkeypatch):
    import baim.compare.runner
    from baim.study import tune_distill as td
    from baim.study.tune import Stage

    _no_test_split(monkeypatch, baim.compare.runner)
    stage = Stage(tmp_path, "smoke", (0,), 2, 1, {}, log=lambda m: None)
    got = td.tune_distill(stage, {"kd": (0.25,), "fd": (0.3,)})
    assert set(got["kd"]["val_loss"]) == {"0.25", "0.5"} and set(got["fd"]["val_loss"]) == {"0.3", "1"}
    for name, field in (("kd", "kd_weight"), ("fd", "distill_weight")):
        means = got[name]["val_loss"]
        assert got[name]["chosen"] == float(min(means, key=means.get))
        assert got["settings"][field] == got[name]["chosen"]
        assert got[name]["gain_vs_default"] <= 0
        assert len(set(means.values())) == 2  # the weight really changes the models
    trial = json.loads((tmp_path / "distill" / "seed-0" / "kd-w0.25.json").read_text())
    assert trial["settings"]["kd_weight"] == 0.25 and "0.75*(MSE" in trial["settings"]["distill_loss"]
    assert len(trial["val_loss"]) == get_preset("smoke").num_edges
    fd_trial = json.loads((tmp_path / "distill" / "seed-0" / "fd-w0.3.json").read_text())
    assert fd_trial["settings"]["distill_weight"] == 0.3

    def no_run(*a, **k):
        raise AssertionError("a finished trial was run again")

    monkeypatch.setattr(td, "_run", no_run)
    again = td.tune_distill(stage, {"kd": (0.25,), "fd": (0.3,)})
    assert again == got
    assert "kd_weight" in "\n".join(td.report(got))


@pytest.mark.parametrize(("text", "flag"), [("1.0", "--kd-weights"), ("0,0.5", "--fd-weights"), ("a", "--kd-weights")])
def test_bad_distill_weights_are_refused(text, flag):
    from baim.study.tune_distill import parse_weights

    with pytest.raises(ConfigError, match=flag):
        parse_weights(text, flag)


def test_a_study_runs_kd_and_fd_with_the_tuned_weights_and_refuses_cells_of_others(tmp_path):
    from baim.study.runner import _check_tuned_settings, cell_dir
    from baim.study.tune import load_tuned_settings

    path = tmp_path / "tune.json"
    path.write_text(json.dumps({"tier_lr": {}, "distill": {"settings": {"kd_weight": 0.25, "distill_weight": 3.0}}}))
    chosen = load_tuned_settings(path)
    assert chosen == {"kd_weight": 0.25, "distill_weight": 3.0}
    s = Settings(rounds=1, local_epochs=1, sl_epochs=1, central_epochs=1).with_weights(chosen)
    assert (s.kd_weight, s.distill_weight) == (0.25, 3.0)
    (budget,) = parse_budgets("4")
    d = cell_dir(tmp_path, 0, budget) / "methods"
    d.mkdir(parents=True)
    (d / "kd.json").write_text(json.dumps({"settings": {"kd_weight": 0.25}}))
    _check_tuned_settings(tmp_path, [0], [budget], chosen, path)  # the same weights: fine
    with pytest.raises(ConfigError, match="kd ran with kd_weight 0.25.*fresh --out"):
        _check_tuned_settings(tmp_path, [0], [budget], {}, None)
    (d / "kd.json").write_text(json.dumps({"settings": {}}))  # made before the weight was a setting: 0.5
    _check_tuned_settings(tmp_path, [0], [budget], {"kd_weight": 0.5}, path)
    path.write_text(json.dumps({"tier_lr": {}, "distill": {"settings": {"kd_weight": "high"}}}))
    with pytest.raises(ConfigError, match="distill settings"):
        load_tuned_settings(path)
    path.write_text(json.dumps({"tier_lr": {}}))
    assert load_tuned_settings(path) == {}


def test_the_cloud_recipe_is_chosen_per_budget_and_a_study_budget_reads_its_own(tmp_path, monkeypatch):
    import baim.engines
    from baim.study import tune
    from baim.study.tune import Stage, tune_cloud

    seen = []

    def fake_run(out, cfg):
        p = cfg.resolved_preset()
        seen.append((out.parent.name, p.edge.epochs, p.edge.patience))
        loss = {"gentle": 0.03, "paper": 0.05}[out.parent.name.removeprefix("cloud-").removesuffix("-b4")]
        edges = [{"edge": e, "delivery": {"val_loss": loss + 0.001 * e}} for e in range(2)]
        return {"edges": edges, "strategies": {"finetune": {"curve": []}}}

    monkeypatch.setattr(baim.engines, "run", fake_run)
    monkeypatch.setattr(tune, "kept_val_losses", lambda folder, ds, seed: {0: 0.02, 1: 0.03})
    stage = Stage(tmp_path, "quick", (0,), 30, 3, {}, log=lambda m: None)
    at4 = tune_cloud(stage, ("gentle", "paper"), "4")
    assert at4["budget"] == "4" and at4["chosen"] == "gentle"  # a tie: the default
    assert sorted(seen) == [("cloud-gentle-b4", 4, 0), ("cloud-paper-b4", 4, 0)]  # the budget's own training
    path = tmp_path / "tune.json"
    paper = {"chosen": "paper", "cloud_recipe": "paper", "overrides": {}}
    path.write_text(json.dumps({"tier_lr": {}, "cloud": paper, "cloud_by_budget": {"4": at4, "converged": paper}}))
    assert load_tuned(path, "4") == ({}, "gentle")
    assert load_tuned(path, "converged") == ({}, "paper")
    assert load_tuned(path, "10") == ({}, "paper")  # no choice of its own: the one made at converged


def test_a_tuning_call_keeps_the_stages_an_earlier_call_chose_at_the_same_seeds_and_rates(tmp_path):
    from baim.study.tune import _keep_earlier_stages

    path = tmp_path / "tune.json"
    cloud = {"chosen": "even-gates", "cloud_recipe": "gentle", "overrides": {"gate_init_from_screening": False}}
    earlier = {"seeds": [0, 1], "tier_lr": {"large": 0.001}, "cloud": cloud, "cloud_by_budget": {"converged": cloud}}
    path.write_text(json.dumps(earlier | {"distill": {"settings": {"kd_weight": 0.25}}}))
    now = {"seeds": [0, 1], "tier_lr": {"large": 0.001}, "distill": {"settings": {"kd_weight": 0.75}}}
    _keep_earlier_stages(path, now, print)
    assert now["cloud"] == cloud and now["cloud_by_budget"] == {"converged": cloud}
    assert now["distill"]["settings"] == {"kd_weight": 0.75}  # what this call chose wins
    lines = []
    other = {"seeds": [0, 1], "tier_lr": {"large": 0.002}}  # other rates: the old choice is stale
    _keep_earlier_stages(path, other, lines.append)
    assert "cloud" not in other and "distill" not in other and "dropping" in lines[0]


@pytest.mark.integration
def test_tune_jobs_runs_trials_in_worker_processes_with_the_sequential_numbers(tmp_path, monkeypatch):
    """``--jobs 2``: a stage's trials in two fresh processes; each trial's numbers are exactly
    what one process on the same thread count computes, and the choice is the same."""
    import torch

    from baim.study import trials, tune

    monkeypatch.setattr(trials, "worker_threads", lambda jobs: 1)
    monkeypatch.setattr(tune, "worker_threads", lambda jobs: 1)
    threads = torch.get_num_threads()
    try:
        par = run_tune(tmp_path / "par", "smoke", (0,), (0.002,), cap=2, patience=1, jobs=2)
        torch.set_num_threads(1)
        seq = run_tune(tmp_path / "seq", "smoke", (0,), (0.002,), cap=2, patience=1)
    finally:
        torch.set_num_threads(threads)
    strip = [{k: v for k, v in t.items() if k != "seconds"} for t in par["trials"]]
    assert strip == [{k: v for k, v in t.items() if k != "seconds"} for t in seq["trials"]]
    assert par["tiers"] == seq["tiers"] and len(par["trials"]) == 2 * get_preset("smoke").num_edges


def test_a_failing_trial_stops_the_others_and_is_raised(tmp_path):
    from baim.study.trials import run_calls

    with pytest.raises(ZeroDivisionError):
        run_calls([(divmod, (1, 0)), (divmod, (4, 2))], jobs=2)
    with pytest.raises(ConfigError, match="--jobs 0"):
        run_tune(tmp_path, "smoke", (0,), (0.002,), jobs=0)


def test_a_study_refuses_a_tuning_made_with_another_convergence_rule(tmp_path):
    """Rates chosen for trainings capped at 30 epochs need not win at 100: a study whose
    converged budget stops trainings by another rule refuses the tune.json, naming both fixes."""
    from baim.study.tune import check_convergence

    path = tmp_path / "tune.json"
    path.write_text(json.dumps(_summary_stub()))  # made with cap 30, patience 3
    check_convergence(path, parse_budgets("4,converged", cap=30, patience=3))
    check_convergence(path, parse_budgets("4"))  # a fixed budget stops no training early
    with pytest.raises(
        ConfigError, match="tune again into a new --out with --cap 100 --patience 3, or run the study with --cap 30"
    ):
        check_convergence(path, parse_budgets("converged"))
    with pytest.raises(ConfigError, match="capped at 30"):
        run_study(tmp_path / "s", "smoke", [0], parse_budgets("converged"), tuned=path)


def test_a_tuning_folder_refuses_another_cap(tmp_path):
    """Trial files are not named by the cap: a call with another one must not resume them."""
    from baim.study.tune import _one_rule

    _one_rule(tmp_path, 30, 3)
    _one_rule(tmp_path, 30, 3)
    with pytest.raises(ConfigError, match="made with cap 30, patience 3.*use another --out"):
        _one_rule(tmp_path, 100, 3)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "tune.json").write_text(json.dumps(_summary_stub()))
    with pytest.raises(ConfigError, match="cap 30"):
        run_tune(legacy, "smoke", (0,), (0.002,), cap=2, patience=1)
