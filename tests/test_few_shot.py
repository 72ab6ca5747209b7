"""Few-shot tasks (a task with only N cloud common images) and same-squad-only connections."""

import json
from dataclasses import asdict

import pytest
import torch

from baim.cloud import fuse
from baim.config import Preset, RunConfig, parse_few_shot, run_overrides
from baim.data.layout import Layout, class_histogram, few_shot_pick, make_layout
from baim.errors import ConfigError, DataError
from baim.learners import StagedVAE, tier_spec
from baim.models import candidate_connections
from baim.presets import get_preset

QUICK = get_preset("quick")


def task_cloud(layout: Layout, ds, name: str) -> list[int]:
    classes = set(next(t["classes"] for t in layout.tasks if t["name"] == name))
    labels = ds.train.labels
    return [i for i in layout.cloud if int(labels[i]) in classes]


# -- settings ---------------------------------------------------------------------------------


def test_parse_few_shot():
    assert parse_few_shot("tops=10") == {"tops": 10}
    assert parse_few_shot("tops=10, footwear=50") == {"tops": 10, "footwear": 50}
    assert parse_few_shot(["tops=10", "footwear=5,trousers_bags=7"]) == {"tops": 10, "footwear": 5, "trousers_bags": 7}
    assert parse_few_shot(["tops=10", "tops=10"]) == {"tops": 10}
    assert parse_few_shot("") == {}
    for bad in ("tops", "tops=", "=5", "tops=0", "tops=1", "tops=-3", "tops=x", "tops=1.5"):
        with pytest.raises(ConfigError, match="TASK=N"):
            parse_few_shot(bad)
    with pytest.raises(ConfigError, match="twice"):
        parse_few_shot("tops=10,tops=20")


def test_preset_round_trip_and_old_presets_load():
    p = QUICK.with_overrides(few_shot={"tops": 10}, cross_task_connections=True)
    again = Preset.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again == p and again.few_shot == {"tops": 10} and again.cross_task_connections is True
    assert QUICK.few_shot == {} and QUICK.cross_task_connections is False  # measured not to pay (README)
    old = QUICK.to_dict()
    del old["few_shot"], old["cross_task_connections"]  # stored before these settings existed: they had them
    assert Preset.from_dict(old) == QUICK.with_overrides(cross_task_connections=True)
    for bad in ({"tops": 0}, {"tops": 1}, {"tops": True}, {"tops": "10"}, ["tops"], {3: 10}):
        with pytest.raises(ConfigError, match="few_shot"):
            QUICK.with_overrides(few_shot=bad)
    with pytest.raises(ConfigError, match="cross_task"):
        QUICK.with_overrides(cross_task_connections="no")
    with pytest.raises(ConfigError, match="cloud_evaluation"):
        QUICK.with_overrides(cloud_evaluation="false")  # a string would be truthy: scored after all


def test_run_overrides_of_the_command_line():
    assert run_overrides() == run_overrides([], True) == {}  # a plain run's config.json is unchanged
    assert run_overrides(["tops=10", "footwear=5"], False) == {
        "few_shot": {"tops": 10, "footwear": 5},
        "cross_task_connections": False,
    }
    with pytest.raises(ConfigError, match="TASK=N"):
        run_overrides(["tops:10"])


def test_run_config_carries_the_overrides():
    cfg = RunConfig(overrides={"few_shot": {"tops": 10}, "cross_task_connections": True})
    p = cfg.resolved_preset()
    assert p.few_shot == {"tops": 10} and p.cross_task_connections and p.name == "quick"
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="few_shot"):  # refused at construction, before a folder is claimed
        RunConfig(overrides={"few_shot": {"tops": 0}})
    with pytest.raises(ConfigError, match="unknown preset settings"):
        RunConfig(overrides={"few_shots": {"tops": 10}})


# -- layout -----------------------------------------------------------------------------------


def test_few_shot_pick_is_proportional_and_capped():
    a, b, c = list(range(0, 10)), list(range(100, 130)), list(range(200, 202))
    assert few_shot_pick([a, b, c], 4) == [0, 100, 101, 102]  # 4 × (10, 30, 2)/42 = 0.95, 2.86, 0.19
    assert few_shot_pick([a, b], 8) == [0, 1, 100, 101, 102, 103, 104, 105]
    assert few_shot_pick([a, c], 12) == a + c  # everything
    assert few_shot_pick([a[:1], b], 31) == [0] + b


def test_few_shot_layout_differs_from_the_full_one_only_in_cloud(fmnist):
    full = make_layout(fmnist, QUICK, seed=5)
    few = make_layout(fmnist, QUICK.with_overrides(few_shot={"trousers_bags": 10, "tops": 50}), seed=5)
    a, b = asdict(full), asdict(few)
    assert b["preset"]["few_shot"] == {"trousers_bags": 10, "tops": 50}
    differ = sorted(k for k in a if k != "preset" and a[k] != b[k])
    assert differ == ["cloud"]
    assert set(few.cloud) < set(full.cloud)  # dropped images went nowhere: not to edges, not elsewhere
    assert len(task_cloud(few, fmnist, "trousers_bags")) == 10
    assert len(task_cloud(few, fmnist, "tops")) == 50
    assert task_cloud(few, fmnist, "footwear") == task_cloud(full, fmnist, "footwear")
    # stratified: trousers and bags 5 each; the five tops classes 10 each
    assert class_histogram(fmnist, task_cloud(few, fmnist, "trousers_bags")) == {1: 5, 8: 5}
    assert class_histogram(fmnist, task_cloud(few, fmnist, "tops")) == {c: 10 for c in (0, 2, 3, 4, 6)}
    # the first images of the seeded order: a smaller N keeps a subset of a larger one
    few50 = make_layout(fmnist, QUICK.with_overrides(few_shot={"trousers_bags": 50}), seed=5)
    assert set(task_cloud(few, fmnist, "trousers_bags")) < set(task_cloud(few50, fmnist, "trousers_bags"))
    assert make_layout(fmnist, QUICK.with_overrides(few_shot={"trousers_bags": 10, "tops": 50}), seed=5) == few


def test_few_shot_layout_saves_and_loads(fmnist, tmp_path):
    few = make_layout(fmnist, QUICK.with_overrides(few_shot={"footwear": 12}), seed=1)
    loaded = Layout.load(few.save(tmp_path / "layout.json"))
    assert loaded == few and loaded.settings.few_shot == {"footwear": 12}


def test_few_shot_errors(fmnist, tmp_path):
    with pytest.raises(ConfigError, match="tops, footwear, trousers_bags"):
        make_layout(fmnist, QUICK.with_overrides(few_shot={"shoes": 10}))
    full = make_layout(fmnist, QUICK, seed=0)
    has = len(task_cloud(full, fmnist, "trousers_bags"))
    with pytest.raises(ConfigError, match=f"asks for {has + 1} cloud images.*choose 2 to {has}"):
        make_layout(fmnist, QUICK.with_overrides(few_shot={"trousers_bags": has + 1}))
    same = make_layout(fmnist, QUICK.with_overrides(few_shot={"trousers_bags": has}), seed=0)
    assert same.cloud == full.cloud
    # a run is refused before its folder records the settings
    from baim.engines import run

    with pytest.raises(ConfigError, match="not tasks of"):
        run(tmp_path / "run", RunConfig(preset="smoke", overrides={"few_shot": {"shoes": 10}}))
    assert not (tmp_path / "run").exists()
    # a stored layout with a broken few-shot setting is reported as a bad layout
    raw = json.loads(full.save(tmp_path / "layout.json").read_text())
    raw["preset"]["few_shot"] = {"tops": -1}
    (tmp_path / "layout.json").write_text(json.dumps(raw))
    with pytest.raises(DataError, match="few_shot"):
        Layout.load(tmp_path / "layout.json")


# -- fusion -----------------------------------------------------------------------------------


def test_fuse_without_cross_task_connections():
    torch.manual_seed(0)
    learners = [StagedVAE(tier_spec(t)) for t in ("small", "medium", "small", "large")]
    tasks, names = [0, 0, 1, 2], ["a", "b", "c"]
    counts = [(m.spec.num_stages, m.spec.num_stages) for m in learners]
    full = set(candidate_connections(counts, 1))
    both = fuse(learners, tasks, names, height=1)
    assert set(both.conn_keys.values()) == full
    assert any(tasks[c.src] != tasks[c.dst] for c in full)
    own = fuse(learners, tasks, names, height=1, cross_task=False)
    kept = set(own.conn_keys.values())
    assert kept and all(tasks[c.src] == tasks[c.dst] for c in kept)
    assert kept == {c for c in full if tasks[c.src] == tasks[c.dst]}
    assert {c.src for c in kept} == {c.dst for c in kept} == {0, 1}  # one-learner squads get none


# -- end to end -------------------------------------------------------------------------------


@pytest.mark.integration
def test_smoke_run_with_a_few_shot_task(tmp_path, fmnist):
    """The whole workflow with a 10-image task and same-squad connections only."""
    from baim.engines import run

    cfg = RunConfig(
        preset="smoke",
        strategies=("finetune",),
        overrides={"few_shot": {"trousers_bags": 10}, "cross_task_connections": False},
    )
    summary = run(tmp_path, cfg)
    layout = Layout.load(tmp_path / "layout.json")
    full = make_layout(fmnist, get_preset("smoke"), seed=0)
    assert layout.edges == full.edges and layout.test == full.test
    assert len(task_cloud(layout, fmnist, "trousers_bags")) == 10
    assert json.loads((tmp_path / "config.json").read_text())["overrides"]["few_shot"] == {"trousers_bags": 10}
    result = summary["strategies"]["finetune"]
    task_of = {t: layout.task_names[t] for t in range(len(layout.tasks))}
    edge_task = {e.edge: e.task for e in layout.edges}
    log = json.loads((tmp_path / "cloud" / "baim-finetune" / "log.json").read_text())
    assert result["candidates"] == log["candidates"] == 0  # smoke: one learner per squad, so none within
    for name, m in result["per_task"].items():
        assert m["test_loss"] > 0 and m["fid_fitted"] == m["fid_fitted"], name
    assert set(result["per_task"]) == set(task_of.values()) and len(edge_task) == 3
    assert len(summary["edges"]) == 3 and all("personalized" in e["models"] for e in summary["edges"])
