"""Learner-level pruning: usage counts, deselection, decoder trimming (only as deep as still
read, transitively), exactness for everything the gate still routes the same way, files and
partition of the pruned BAIM, and the measured run-level command."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from baim.cloud import partition
from baim.cloud.pruning import learner_usage, prune_learners, prune_learners_in_run
from baim.errors import ConfigError
from baim.models import BAIM, Connection, load_model, save_model
from conftest import look_trained, trained_learners

TIERS = ["small", "medium", "small", "small", "medium"]
TASKS = [0, 0, 0, 1, 1]  # squad a = learners 0, 1, 2; squad b = learners 3, 4


def _baim(connections=(), top_k=1, seed=0):
    """A trained-looking BAIM: BatchNorm statistics, non-zero α, gates with preferences."""
    model = BAIM.from_learners(trained_learners(TIERS, seed), TASKS, ["a", "b"], list(connections), top_k=top_k)
    return look_trained(model, 0.3, 1.0).eval()


def _images(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 32, 32, generator=g) * 255).to(torch.uint8).numpy(), np.arange(n) % 2


# learner 3 (kept, task b) reads learner 2's decoder stage 1; learner 2 reads learner 1 at
# stages 0 and 2; learner 0 feeds learner 4 (both kept); an encoder connection from learner 1
CHAIN = [
    Connection("dec", 2, 1, 3, 2),
    Connection("dec", 1, 0, 2, 0),
    Connection("dec", 1, 2, 2, 2),
    Connection("dec", 0, 1, 4, 1),
    Connection("enc", 1, 0, 3, 0),
]


def test_usage_counts_every_pick_as_served():
    model = _baim(CHAIN, top_k=2)
    x, tasks = _images()
    usage = learner_usage(model, x, tasks, batch_size=10)  # batches that split the tasks unevenly
    for t in (0, 1):
        assert usage[t].dtype == torch.long and len(usage[t]) == len(model.squad(t))
        assert int(usage[t].sum()) == int((tasks == t).sum()) * 2  # K = 2 picks per image
    # the same counts from the forward pass that serves requests (z = posterior mean)
    with torch.no_grad():
        out = model(torch.from_numpy(x).float() / 255, torch.from_numpy(tasks), sample=False)
    for t, (_, routing) in out.routings.items():
        assert torch.equal(usage[t], torch.bincount(routing.indices.flatten(), minlength=len(usage[t])))


def test_pruning_trims_only_what_is_no_longer_read_and_keeps_the_rest_exact(tmp_path):
    model = _baim(CHAIN)
    x, tasks = _images()
    xf, tt = torch.from_numpy(x).float() / 255, torch.from_numpy(tasks)
    noise = torch.randn(len(x), model.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(xf, tt, noise=noise)
        gen_before = model.generate(1, 8, torch.Generator().manual_seed(2))
    compact_before = [partition(model, t).num_parameters() for t in (0, 1)]
    p0 = model.num_parameters()

    dropped = prune_learners(model, {0: torch.tensor([100, 1, 1]), 1: torch.tensor([50, 50])}, threshold=0.05)

    assert dropped == [1, 2] and model.lsgate(0).active.tolist() == [True, False, False]
    # learner 2: stages 0-1 stay (learner 3 reads stage 1), no head; learner 1: stage 0 only
    # (learner 2's kept stage 0 reads it; its stage-2 reader is gone, so that connection is too)
    assert model.trimmed == {1: {"dec": 1}, 2: {"dec": 2}}
    assert model.learner(2).image_head is None and model.learner(1).image_head is None
    assert set(model.conn_keys.values()) == set(CHAIN) - {Connection("dec", 1, 2, 2, 2)}
    assert len(model.learner(1).encoder_stages) == 3  # encoders stay: they are posterior experts
    assert model.num_parameters() < p0
    assert partition(model, 0).num_parameters() < compact_before[0]

    with torch.no_grad():
        after = model(xf, tt, noise=noise)
        gen_after = model.generate(1, 8, torch.Generator().manual_seed(2))
    torch.testing.assert_close(after.mu, before.mu, rtol=0, atol=0)  # the posterior is untouched
    rows_a, routed_a = before.routings[0]
    kept = rows_a[(routed_a.indices == 0).all(dim=1)]  # task a samples that never used 1 or 2
    moved = rows_a[(routed_a.indices != 0).any(dim=1)]
    assert len(kept) and len(moved), "the test needs samples routed both ways"
    assert (after.x_hat[kept] - before.x_hat[kept]).abs().max() <= 1e-6
    assert (after.x_hat[moved] - before.x_hat[moved]).abs().max() > 1e-3  # those did change
    rows_b = (tt == 1).nonzero().squeeze(1)
    assert (after.x_hat[rows_b] - before.x_hat[rows_b]).abs().max() <= 1e-6  # task b untouched
    assert (gen_after - gen_before).abs().max() <= 1e-6

    # even a gate that now prefers the removed learners cannot pick them
    with torch.no_grad():
        model.lsgate(0).out_layer.bias.copy_(torch.tensor([-20.0, 20.0, 20.0]))
    assert learner_usage(model, x, tasks)[0].tolist() == [int((tasks == 0).sum()), 0, 0]

    # the pruned BAIM saves, loads and partitions without loss
    save_model(model, tmp_path / "pruned")
    loaded = load_model(tmp_path / "pruned", "baim")
    assert isinstance(loaded, BAIM)
    assert loaded.trimmed == model.trimmed and loaded.num_parameters() == model.num_parameters()
    assert loaded.lsgate(0).active.tolist() == [True, False, False]
    with torch.no_grad():
        assert torch.equal(loaded(xf, tt, noise=noise).x_hat, model(xf, tt, noise=noise).x_hat)
        for t in (0, 1):
            compact = partition(loaded, t)
            rows = (tt == t).nonzero().squeeze(1)
            zero = torch.zeros(len(rows), dtype=torch.long)
            a = model(xf[rows], torch.full((len(rows),), t), noise=noise[rows]).x_hat
            assert (compact(xf[rows], zero, noise=noise[rows]).x_hat - a).abs().max() <= 1e-6


def test_an_unread_learner_loses_its_whole_decoder():
    model = _baim([Connection("dec", 3, 0, 2, 0), Connection("dec", 0, 1, 4, 1)])
    lrn = model.learner(2)
    decoder = [*lrn.decoder_stages.parameters(), *lrn.image_head.parameters(), *lrn.latent_in.parameters()]
    decoder += [*model.adapters[2].parameters(), *model.connections[Connection("dec", 3, 0, 2, 0).name].parameters()]
    p0 = model.num_parameters()
    assert prune_learners(model, {0: torch.tensor([30, 30, 0])}, threshold=0.01) == [2]
    assert len(model.learner(2).decoder_stages) == 0 and model.learner(2).latent_in is None
    assert model.trimmed == {2: {"dec": 0}} and list(model.conn_keys.values()) == [Connection("dec", 0, 1, 4, 1)]
    assert p0 - model.num_parameters() == sum(p.numel() for p in decoder)
    x, tasks = _images(n=12)
    with torch.no_grad():  # still runs, for every task
        assert torch.isfinite(model(torch.from_numpy(x).float() / 255, torch.from_numpy(tasks)).x_hat).all()


def test_threshold_zero_changes_nothing_and_bad_thresholds_are_refused():
    model = _baim(CHAIN, top_k=2)
    x, tasks = _images()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert prune_learners(model, learner_usage(model, x, tasks), threshold=0.0) == []
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    assert model.trimmed == {} and set(model.conn_keys.values()) == set(CHAIN)
    with pytest.raises(ConfigError, match="threshold"):
        prune_learners(model, {}, threshold=1.5)


def test_the_best_used_learner_of_a_squad_always_stays():
    model = _baim()
    assert prune_learners(model, {0: torch.tensor([0, 5, 0]), 1: torch.tensor([3, 1])}, threshold=1.0) == [0, 2, 4]
    assert model.lsgate(0).active.tolist() == [False, True, False] and model.lsgate(1).active.tolist() == [True, False]


class _StopAfterCloud(Exception):
    pass


@pytest.mark.integration
def test_prune_learners_in_run_measures_both_sides(tmp_path, monkeypatch):
    """A tiny run stopped after its cloud phase (the smoke preset with six edges, so squads
    have two learners and K = 2 gives each a share of exactly 1/2): a threshold above 1/2
    drops one learner per two-learner squad, and the report says what that cost."""
    from baim import config, engines, presets
    from baim.workflow import phases

    smoke = presets.get_preset("smoke")
    tiny = replace(
        smoke,
        name="tiny-pruning",
        num_edges=6,
        samples_per_edge=96,
        cloud_samples=96,
        test_per_task=32,
        edge=replace(smoke.edge, epochs=1),
    )
    monkeypatch.setitem(presets.PRESETS, "tiny-pruning", tiny)

    def stop(ctx):
        raise _StopAfterCloud

    monkeypatch.setattr(phases, "partition", stop)  # the phases after the BAIM's play no part here
    run = tmp_path / "run"
    with pytest.raises(_StopAfterCloud):
        engines.run(run, config.RunConfig(preset="tiny-pruning", strategies=("finetune",)))
    source = run / "cloud" / "baim-finetune"
    manifest = (source / "manifest.json").read_bytes()
    recorded = json.loads((run / "state" / "cloud_finetune.json").read_text())["result"]

    report = prune_learners_in_run(run, 0.6)

    assert (source / "manifest.json").read_bytes() == manifest  # the run's BAIM is not touched
    out = run / "cloud" / "baim-finetune-pruned"
    assert json.loads((out / "pruning.json").read_text()) == report
    pruned = load_model(out, "baim")
    assert isinstance(pruned, BAIM)
    edges = recorded["learner_edges"]
    squads = {name: u["learners"] for name, u in report["usage"].items()}
    assert report["dropped"], "the test needs a squad of two learners"
    for name, learners in squads.items():
        assert sum(u["picks"] for u in learners) == report["usage"][name]["images"] * min(2, len(learners))
        if len(learners) == 2:  # both picked on every image: shares 1/2, the second one goes
            assert [u["share"] for u in learners] == [0.5, 0.5] and [u["selectable"] for u in learners] == [True, False]
        for u in learners:
            assert u["edge"] == edges[u["learner"]]
    dropped_tasks = {d["task"] for d in report["dropped"]}
    before, after = report["before"], report["after"]
    assert before["per_task"] == recorded["per_task"]  # "before" is the run's own evaluation, number for number
    assert after["parameters"] == pruned.num_parameters() < before["parameters"]
    for name in squads:
        b, a = before["per_task"][name], after["per_task"][name]
        if name in dropped_tasks:
            assert after["compact_parameters"][name] < before["compact_parameters"][name]
            assert a["test_loss"] != b["test_loss"]
        else:  # nothing of these tasks changed: the same numbers, FID included
            assert after["compact_parameters"][name] == before["compact_parameters"][name]
            assert a == b
    with pytest.raises(ConfigError, match="trained BAIM itself"):
        prune_learners_in_run(run, 0.1, out=source)
