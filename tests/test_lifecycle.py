"""The lifecycle in the workflow (:mod:`baim.schedule`): sync and async schedules, late uploads
integrated by continual learning, a staleness bound on redeployments, edges that leave and
join, and the run's timeline."""

import json
from dataclasses import replace

import pytest

from baim.config import RunConfig
from baim.data.layout import make_layout
from baim.engines import run
from baim.errors import ConfigError, WorkflowError
from baim.presets import get_preset
from baim.schedule import plan, redeploy


@pytest.fixture(scope="module")
def layout(fmnist):
    # 6 edges over 3 tasks, two tiers: different simulated finish times
    return make_layout(fmnist, replace(get_preset("smoke"), num_edges=6, tiers=("small", "medium")), seed=0)


def test_async_fuses_at_the_first_quorum_and_queues_the_rest_in_arrival_order(layout):
    edges = [e.edge for e in layout.edges]
    p = plan(layout, edges, "async", (32, 1))
    first, rest = p["batches"][0], p["batches"][1:]
    finish = {int(e): t for e, t in p["finish_s"].items()}
    assert {layout.edges[e].task for e in first} == {0, 1, 2}  # every task once at least
    # the quorum is a prefix in arrival order, and no shorter prefix covers every task
    order = sorted(edges, key=lambda e: (finish[e], e))
    assert first == order[: len(first)]
    assert len({layout.edges[e].task for e in first[:-1]}) < 3
    assert [b[0] for b in rest] == order[len(first) :] and all(len(b) == 1 for b in rest)
    # a bigger tier stands for a faster device, but its learner costs more per image: both count
    assert p["training_flops_per_image"]["medium"] > p["training_flops_per_image"]["small"]


def test_sync_waits_for_everyone_and_late_joiners_come_last(layout):
    edges = [e.edge for e in layout.edges]
    assert sorted(plan(layout, edges, "sync", (32, 1))["batches"][0]) == edges
    late = plan(layout, edges, "async", (32, 1), join_late=(edges[-1],))
    assert late["batches"][-1] == [edges[-1]] and edges[-1] not in late["batches"][0]


def test_a_task_whose_edges_all_join_late_cannot_open_the_first_baim(layout):
    tops = tuple(e.edge for e in layout.edges if e.task == 0)
    with pytest.raises(WorkflowError, match="baim cloud add"):
        plan(layout, [e.edge for e in layout.edges], "async", (32, 1), join_late=tops)


def test_redeploy_respects_the_staleness_bound():
    assert redeploy({0: 1, 3: 2, 4: 0}, 0) == [0, 3]
    assert redeploy({0: 1, 3: 2, 4: 0}, 1) == [3]


def test_lifecycle_settings_are_checked_before_a_run_folder_is_claimed():
    with pytest.raises(ConfigError, match="schedule"):
        RunConfig(schedule="sometimes")
    with pytest.raises(ConfigError, match="only with --schedule async"):
        RunConfig(join_late=(1,))
    with pytest.raises(ConfigError, match="not in the layout"):
        RunConfig(preset="smoke", leave=(7,))
    with pytest.raises(ConfigError, match="both"):
        RunConfig(preset="smoke", schedule="async", leave=(1,), join_late=(1,))
    # a plain run's stored config is what it was before the lifecycle existed (old runs resume)
    assert set(RunConfig().to_dict()) == {
        "preset", "seed", "dataset", "data_dir", "fid_extractor", "engine", "strategies", "cloud_recipe", "overrides"
    }  # fmt: skip
    cfg = RunConfig(preset="smoke", schedule="async", staleness=1, leave=(1,), join_late=(2,))
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.integration
@pytest.mark.parametrize("staleness", [0, 1])
def test_async_run_integrates_late_uploads_redeploys_and_records_the_timeline(tmp_path, staleness):
    cfg = RunConfig(
        preset="smoke",
        strategies=("finetune",),
        schedule="async",
        staleness=staleness,
        overrides={"num_edges": 5},
        leave=(1,),
        join_late=(4,),
    )
    s = run(tmp_path / "run", cfg)
    life, tl = s["lifecycle"], s["timeline"]
    assert life["batches"][0] == [0, 1, 2] and life["batches"][1:] == [[3], [4]]  # equal finish times: by edge
    assert len(life["integrations"]) == 2 and life["final"]["version"] == 2
    for i in life["integrations"]:  # tops grows; footwear and trousers_bags are untouched and identical
        assert i["task"] == "tops" and i["untouched_tasks"] == ["footwear", "trousers_bags"]
        assert i["untouched_max_abs_diff"] <= 1e-6
        assert i["parameters_after"] > i["parameters_before"]
    for i in life["integrations"]:  # a redeployed edge gets a model within its own budget, as at deployment
        assert sorted(int(e) for e in i.get("delivered", {})) == sorted(i["deployed"])
        assert all(d["within_budget"] and d["bytes"] <= d["budget_bytes"] for d in i.get("delivered", {}).values())
    models = {e["edge"]: e["models"] for e in s["edges"]}
    assert models[1] == {}  # left after uploading: never deployed to, never asked again
    assert "personalized" in models[4]  # joined late: got its task's newest model
    held = life["deployed_versions"]
    assert "1" not in held and held["4"] == 2 and held["2"] == 0
    if staleness == 0:  # every tops version reached every tops edge present
        assert held["0"] == held["3"] == 2
        assert life["integrations"][0]["deployed"] == [0, 3]
    else:  # one version's lag is allowed: the first integration redeploys nobody
        assert life["integrations"][0]["deployed"] == []
        assert held["0"] == held["3"] == 2  # the second makes them lag by two: redeployed
    kinds = [ev["event"] for ev in tl["events"]]
    assert kinds.count("baim_version") == 3 and "join" in kinds and "leave" in kinds
    times = [ev["t_s"] for ev in tl["events"]]
    assert times == sorted(times)
    first = next(ev for ev in tl["events"] if ev["event"] == "deployment")
    assert first["t_s"] == tl["first_deployment_s"] and first["version"] == 0
    # the first BAIM did not wait for edge 4 (joined late): its deployment came before edge 4's upload
    upload4 = next(ev for ev in tl["events"] if ev["event"] == "upload" and ev["edge"] == 4)
    assert tl["first_deployment_s"] <= upload4["t_s"]
    assert s["bytes"]["per_phase"]["integrations"]["down"] > 0
    assert (tmp_path / "run" / "figures" / "timeline.png").is_file()
