"""Budgeted partition: lossless where it fits, otherwise within the budget, saying what it dropped."""

import copy
import re

import numpy as np
import pytest
import torch

from baim.cloud import closure, fuse, partition
from baim.cloud.budget import (
    MAX_IMAGES,
    MIN_GAIN,
    budgeted_from_run,
    compact_bytes,
    learner_usage,
    lossless_compact,
    partition_within_budget,
    smallest_bytes,
)
from baim.data.layout import make_layout
from baim.errors import ConfigError
from baim.learners import StagedVAE, tier_spec
from baim.models import BAIM, load_model, reconstruction_metrics, save_model
from baim.presets import get_preset
from conftest import FMNIST_DIR, look_trained, trained_learners

# squads: task 0 = learners 0 (small), 1 (medium); task 1 = 2 (large), 3 (small); task 2 = 4 (medium)
TIERS, TASKS = ["small", "medium", "large", "small", "medium"], [0, 0, 1, 1, 2]
IMAGES = np.random.default_rng(0).integers(0, 256, (40, 1, 32, 32), dtype=np.uint8)  # "common images" of a task
BETA = 0.00025


def _baim(seed=0) -> BAIM:
    """A small fused BAIM that looks trained: non-zero α, gates with preferences, cross-task
    connections (so compact models have feeders)."""
    model = look_trained(fuse(trained_learners(TIERS, seed), TASKS, ["a", "b", "c"], top_k=2, height=1), 0.2, 0.5)
    model.prune_connections(0.8)
    return model.eval()


def _usage(model: BAIM, favourite: dict[int, int]) -> dict[int, torch.Tensor]:
    """Counts per squad position: ``favourite[task]`` picked most, the others a little."""
    out = {}
    for t in range(len(model.task_names)):
        u = torch.ones(len(model.squad(t)))
        u[favourite.get(t, 0)] = 10
        out[t] = u
    return out


def _by_usage(model: BAIM, task: int, budget: int, favourite: dict[int, int] | None = None):
    return partition_within_budget(model, task, budget, select="usage", usage=_usage(model, favourite or {}))


def _by_loss(model: BAIM, task: int, budget: int, images: np.ndarray = IMAGES):
    return partition_within_budget(model, task, budget, select="loss", images=images, kld_weight=BETA)


def _loss(model: BAIM, images: np.ndarray = IMAGES) -> float:
    """Test loss as the benchmark measures it, on ``images``."""
    with torch.no_grad():
        return reconstruction_metrics(model, images, 0, BETA, seed=0)["test_loss"]


def _break_decoder(model: BAIM, learner: int) -> None:
    """Make a learner's own images useless (all black), leaving its encoder and stages alone."""
    with torch.no_grad():
        model.learner(learner).image_head.bias.fill_(-20.0)


def _bare_bytes(model: BAIM, task: int) -> int:
    """Bytes of the whole squad with no connection (so no feeder), from plain partition."""
    bare = copy.deepcopy(model)
    for name in list(bare.conn_keys):
        bare.remove_connection(name)
    return compact_bytes(partition(bare, task))


def test_lossless_when_it_fits_matches_the_baim():
    model = _baim()
    t = 1
    compact, report = _by_usage(model, t, 10**9)
    assert _by_loss(model, t, 10**9)[1] == report, "no selection where the lossless model fits"
    assert report["lossless"] and report["dropped_learners"] == [] and report["dropped_connections"] == []
    assert report["bytes"] == report["lossless_bytes"] == compact_bytes(compact) == compact_bytes(partition(model, t))
    assert report["feeders"], "the test needs a compact model with feeders"
    x, noise = torch.rand(6, 1, 32, 32), torch.randn(6, model.latent_dim)
    with torch.no_grad():
        a = model(x, torch.full((6,), t, dtype=torch.long), noise=noise).x_hat
        b = compact(x, torch.zeros(6, dtype=torch.long), noise=noise).x_hat
        assert (a - b).abs().max() <= 1e-6
        g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        assert (model.generate(t, 4, g1) - compact.generate(0, 4, g2)).abs().max() <= 1e-6


def test_connections_go_before_learners_and_the_report_is_exact(tmp_path):
    model = _baim()
    t = 0
    lossless = compact_bytes(partition(model, t))
    bare = _bare_bytes(model, t)
    assert bare < lossless
    budget = (bare + lossless) // 2
    compact, report = _by_usage(model, t, budget)
    assert not report["lossless"] and report["bytes"] == compact_bytes(compact) <= budget
    assert report["kept_learners"] == model.squad(t) and report["dropped_learners"] == []
    kept, dropped = set(report["kept_connections"]), set(report["dropped_connections"])
    assert dropped and not kept & dropped and kept | dropped == set(closure(model, t)[1])
    # the kept names are the BAIM's own connections, carried with their weights
    alphas = sorted(float(p.alpha.detach()) for p in compact.connections.values())
    assert alphas == sorted(float(model.connections[name].alpha.detach()) for name in kept)
    save_model(compact, tmp_path / "c")
    loaded = load_model(tmp_path / "c", "compact")
    x, noise = torch.rand(5, 1, 32, 32), torch.randn(5, model.latent_dim)
    with torch.no_grad():
        assert torch.equal(compact(x, noise=noise).x_hat, loaded(x, noise=noise).x_hat)


def test_small_budget_drops_learners_and_the_model_still_works(tmp_path):
    model = _baim()
    t = 1  # squad: learner 2 (large), 3 (small)
    budget = _bare_bytes(model, t) - 1  # not even the whole squad without connections fits
    compact, report = _by_usage(model, t, budget, {1: 1})  # the small one is used most
    assert report["bytes"] == compact_bytes(compact) <= budget
    assert report["kept_learners"] == [3] and report["dropped_learners"] == [2]
    # really removed: one squad learner, one gate output, adapters only for what is kept
    assert len(compact.squad(0)) == 1 and compact.lsgate(0).num_learners == 1
    assert compact.lsgate(0).out_layer.out_features == 1 and len(compact.adapters) == len(compact.learners)
    assert len(compact.learners) == 1 + len(report["feeders"])
    save_model(compact, tmp_path / "c")
    loaded = load_model(tmp_path / "c", "compact")
    assert isinstance(loaded, BAIM)
    images = loaded.generate(0, 8, torch.Generator().manual_seed(0))
    assert images.shape == (8, 1, 32, 32) and torch.isfinite(images).all()
    with torch.no_grad():
        assert torch.isfinite(loaded(torch.rand(4, 1, 32, 32)).x_hat).all()


def test_the_most_used_learner_is_kept():
    model = _baim()
    t = 1  # squad positions: 0 = learner 2 (large), 1 = learner 3 (small)
    budget = _bare_bytes(model, t) - 1  # room for one of the two only
    for favourite, kept, dropped in ((0, [2], [3]), (1, [3], [2])):
        _, report = _by_usage(model, t, budget, {t: favourite})
        assert report["kept_learners"] == kept and report["dropped_learners"] == dropped


@pytest.mark.parametrize("select", ["usage", "loss"])
def test_below_the_smallest_possible_raises_naming_it(select):
    model = _baim()
    t = 1
    cut = _by_usage if select == "usage" else _by_loss
    with pytest.raises(ConfigError, match="smallest possible") as info:
        cut(model, t, 1000)
    smallest = int(re.search(r"smallest possible is ([\d,]+) bytes", str(info.value)).group(1).replace(",", ""))
    assert smallest == smallest_bytes(model, t)
    compact, report = cut(model, t, smallest)
    assert report["bytes"] == compact_bytes(compact) == smallest and len(report["kept_learners"]) == 1
    with pytest.raises(ConfigError, match=f"{smallest:,}"):
        cut(model, t, smallest - 1)


def test_the_input_model_is_unchanged():
    model = _baim()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    t = 0
    lossless, bare = compact_bytes(partition(model, t)), _bare_bytes(model, t)
    for budget in (lossless, (bare + lossless) // 2, bare - 1, 1000):
        for cut in (_by_usage, _by_loss):
            try:
                cut(model, t, budget)
            except ConfigError:
                assert budget == 1000
    assert model.config.to_dict() == config
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_loss_selection_keeps_the_learner_best_alone_on_the_common_images():
    t = 1  # squad positions: 0 = learner 2 (large), 1 = learner 3 (small)
    for broken, best in ((None, None), (2, 3), (3, 2)):
        model = _baim()
        if broken is not None:
            _break_decoder(model, broken)
        budget = _bare_bytes(model, t) - 1  # room for one of the two only
        alone = {}
        for favourite in (0, 1):  # each one-learner model, by usage
            compact, report = _by_usage(model, t, budget, {t: favourite})
            alone[report["kept_learners"][0]] = _loss(compact)
        assert sorted(alone) == [2, 3]
        compact, report = _by_loss(model, t, budget)
        assert report["bytes"] == compact_bytes(compact) <= budget and report["select"] == "loss"
        assert report["kept_learners"] == [min(alone, key=alone.get)]
        if best is not None:
            assert report["kept_learners"] == [best] and alone[best] < alone[broken]
        # the loss it measured is the benchmark's test loss on those images
        assert report["selection"]["images"] == len(IMAGES)
        assert report["selection"]["loss"] == pytest.approx(_loss(compact), rel=1e-5)


def test_greedy_adds_only_what_lowers_the_loss():
    model = _baim()
    t = 0  # squad: learners 0 (small), 1 (medium); the gate picks both (top-2)
    _break_decoder(model, 1)
    lossless, bare = compact_bytes(partition(model, t)), _bare_bytes(model, t)
    budget = (bare + lossless) // 2  # both learners fit, and some connections
    by_usage, usage_report = _by_usage(model, t, budget)
    assert usage_report["kept_learners"] == [0, 1], "usage keeps whatever fits"
    compact, report = _by_loss(model, t, budget)
    assert not report["lossless"] and report["bytes"] == compact_bytes(compact) <= budget
    assert report["kept_learners"] == [0] and report["dropped_learners"] == [1]
    assert _loss(compact) < _loss(by_usage)
    steps = report["selection"]["steps"]
    assert steps[0] == {"learner": 0, "loss": steps[0]["loss"]} and "learner" not in str(steps[1:])
    losses = [s["loss"] for s in steps]
    assert all(b <= a * (1 - MIN_GAIN) for a, b in zip(losses, losses[1:])), "every step lowers the loss"
    assert sorted(s["connection"] for s in steps[1:]) == report["kept_connections"]
    assert report["selection"]["loss"] == losses[-1] == pytest.approx(_loss(compact), rel=1e-5)
    # healthy: the second learner stays exactly when it lowers the loss of the one best alone
    model = _baim()
    bare = _bare_bytes(model, t)
    alone = {f: _loss(_by_usage(model, t, bare - 1, {t: f})[0]) for f in (0, 1)}  # learner 0, learner 1
    both, report = _by_usage(model, t, bare)  # exactly the squad, no connections
    assert report["kept_learners"] == [0, 1] and report["kept_connections"] == []
    first = min(alone, key=alone.get)
    _, report = _by_loss(model, t, bare)
    assert report["kept_learners"] == ([0, 1] if _loss(both) <= alone[first] * (1 - MIN_GAIN) else [first])


def test_loss_selection_uses_at_most_max_images():
    model = _baim()
    t = 1
    budget = _bare_bytes(model, t) - 1
    many = np.random.default_rng(1).integers(0, 256, (MAX_IMAGES + 9, 1, 32, 32), dtype=np.uint8)
    _, report = _by_loss(model, t, budget, many)
    assert report["selection"]["images"] == MAX_IMAGES
    _, first = _by_loss(model, t, budget, many[:MAX_IMAGES])
    assert report["selection"] == first["selection"]


def test_selection_needs_its_inputs():
    model = _baim()
    with pytest.raises(ConfigError, match="select must be one of"):
        partition_within_budget(model, 0, 10**9, select="size")
    with pytest.raises(ConfigError, match="needs common images"):
        partition_within_budget(model, 0, 10**9, select="loss")
    with pytest.raises(ConfigError, match="needs the LSGate usage"):
        partition_within_budget(model, 0, 10**9, select="usage", usage={0: torch.ones(5)})


def test_one_selectable_learner_gets_a_slim_gate_with_the_same_outputs(tmp_path):
    model = _baim()
    t = 2  # squad: learner 4 alone, with feeders
    plain, slim = partition(model, t), lossless_compact(model, t)
    assert slim.lsgate(0).net[0].out_features == 1 and plain.lsgate(0).net[0].out_features == model.gate_hidden
    assert compact_bytes(slim) < compact_bytes(plain) and slim.conn_keys.keys() == plain.conn_keys.keys()
    save_model(slim, tmp_path / "c")
    loaded = load_model(tmp_path / "c", "compact")
    x, noise = torch.rand(6, 1, 32, 32), torch.randn(6, model.latent_dim)
    with torch.no_grad():
        a = model(x, torch.full((6,), t, dtype=torch.long), noise=noise).x_hat
        for compact in (slim, loaded):
            assert (a - compact(x, noise=noise).x_hat).abs().max() <= 1e-6
            g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
            assert (model.generate(t, 4, g1) - compact.generate(0, 4, g2)).abs().max() <= 1e-6
    # a lossy cut to one learner is slimmed too: the same outputs as with the squad's full gate
    t = 1
    cut, report = _by_usage(model, t, _bare_bytes(model, t) - 1, {1: 1})
    assert report["kept_learners"] == [3] and cut.lsgate(0).net[0].out_features == 1
    assert report["lossless_bytes"] == compact_bytes(partition(model, t))  # two learners: not slimmed


def test_learner_usage_counts_the_gate_choice_on_the_posterior_mean():
    model = _baim()
    with torch.no_grad():
        model.lsgate(0).out_layer.weight.zero_()
        model.lsgate(0).out_layer.bias.copy_(torch.tensor([0.0, 5.0]))  # task 0: position 1 first
    images = np.random.default_rng(0).integers(0, 256, (12, 1, 32, 32), dtype=np.uint8)
    tasks = np.array([0] * 5 + [1] * 4 + [2] * 3)
    usage = learner_usage(model, images, tasks, batch_size=5)
    assert [u.sum().item() for u in usage.values()] == [5 * 2, 4 * 2, 3 * 1]  # top-2, squads of 2, 2, 1
    assert usage[0].tolist() == [5.0, 5.0]
    model.top_k = 1
    usage = learner_usage(model, images, tasks)
    assert usage[0].tolist() == [0.0, 5.0]
    x = torch.from_numpy(images[5:9]).float() / 255
    mu = model.posterior(x, torch.ones(4, dtype=torch.long))[0]
    expected = torch.bincount(model.lsgate(1)(mu, 1, noisy=False).indices.flatten(), minlength=2).float()
    assert usage[1].tolist() == expected.tolist()


@pytest.mark.integration
def test_budgeted_from_a_run_folder(tmp_path, fmnist):
    """The command line's path: a run's layout, its BAIM, usage on the cloud's common data."""
    run = tmp_path / "run"
    layout = make_layout(fmnist, get_preset("smoke"), seed=0, data_dir=str(FMNIST_DIR))
    layout.save(run / "layout.json")
    torch.manual_seed(0)
    learners = [StagedVAE(tier_spec(t)).eval() for t in ["small", "medium", *["small"] * (len(layout.tasks) - 1)]]
    model = fuse(learners, [0, *range(len(layout.tasks))], layout.task_names, height=1)
    with torch.no_grad():
        for p in model.connections.values():
            p.alpha.fill_(0.1)
    save_model(model, run / "cloud" / "baim-finetune")
    name = layout.task_names[0]
    compact, report = budgeted_from_run(run, name, 10**9)
    assert report["lossless"] and not report["prior_refitted"]
    assert compact_bytes(compact) == compact_bytes(partition(model, 0))
    smallest = smallest_bytes(model, 0)
    for select in ("loss", "usage"):
        compact, report = budgeted_from_run(run, name, smallest, select)
        assert not report["lossless"] and report["prior_refitted"] and report["bytes"] == smallest
        assert report["select"] == select and ("selection" in report) == (select == "loss")
        assert len(report["kept_learners"]) == 1 and len(report["dropped_learners"]) == 1
        assert compact.prior(0).fitted and not torch.equal(compact.prior(0).mean, model.prior(0).mean)
    with pytest.raises(ConfigError, match="unknown task"):
        budgeted_from_run(run, "no-such-task", 10**9)
