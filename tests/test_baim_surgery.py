"""The only ways a BAIM's structure changes: its methods, each keeping the config in step."""

import dataclasses

import pytest
import torch

from baim.cloud import fuse
from baim.cloud.partition import partition
from baim.learners import StagedVAE, tier_spec
from baim.models import BAIM, BAIMConfig, Connection, load_model, save_model
from conftest import trained_learners


def _learners(tiers, seed=0):
    return trained_learners(tiers, seed, batch=16)


def _spread(model: BAIM) -> BAIM:
    """Gates that choose by z, connections that matter: a model whose outputs would move."""
    with torch.no_grad():
        for g in model.lsgates:
            g.out_layer.weight.normal_(0, 1.0)
        for p in model.connections.values():
            p.alpha.normal_(0, 0.3)
    return model.eval()


def _outputs(model: BAIM, task: int, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x, torch.full((len(x),), task, dtype=torch.long), noise=noise).x_hat


def _rebuilt(model: BAIM, tmp_path) -> BAIM:
    save_model(model, tmp_path / "m")
    return load_model(tmp_path / "m")


def test_the_config_is_frozen_and_the_views_are_read_only():
    model = fuse(_learners(["small", "medium"]), [0, 1], ["a", "b"], top_k=1, height=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.top_k = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        model.latent_dim = 3  # type: ignore[misc]
    model.task_names.append("c")  # a copy: the model is not changed by it
    assert model.task_names == ["a", "b"] and model.config.task_names == ("a", "b")
    with pytest.raises(TypeError):
        model.conn_keys["x"] = Connection("enc", 0, 0, 1, 0)  # type: ignore[index]
    model.top_k = 2  # K may change for serving, through the config
    assert model.config.top_k == 2
    config = BAIMConfig(["a"], [0], [tier_spec("small")], frozen=[0])
    assert config.task_names == ("a",) and config.frozen == (0,)


def test_add_learner_opens_a_task_grows_the_latent_and_leaves_other_squads_exact(tmp_path):
    model = _spread(fuse(_learners(["small", "medium"]), [0, 1], ["a", "b"], top_k=1, height=1))
    x, noise = torch.rand(6, 1, 32, 32), torch.randn(6, model.latent_dim)
    before = [_outputs(model, t, x, noise) for t in (0, 1)]
    n_tasks_out = model.tsgate.net[-1].out_features
    index = model.add_learner(_learners(["large"], seed=3)[0], "c")
    assert index == 2 and model.task_names == ["a", "b", "c"] and model.learner_tasks == [0, 1, 2]
    assert model.latent_dim == tier_spec("large").latent_dim and model.lsgate(2).num_learners == 1
    assert model.tsgate.net[-1].out_features == n_tasks_out + 1
    wide = torch.cat([noise, torch.zeros(6, model.latent_dim - noise.shape[1])], 1)
    for t in (0, 1):
        assert torch.equal(_outputs(model, t, x, wide), before[t])
    # the stored config describes the grown model: it rebuilds to the same outputs
    again = _rebuilt(model, tmp_path)
    assert again.config == model.config
    assert torch.equal(_outputs(again, 2, x, wide), _outputs(model, 2, x, wide))


def test_add_learner_to_a_squad_grows_its_gate_by_one_even_output():
    model = _spread(fuse(_learners(["small", "medium"]), [0, 1], ["a", "b"], top_k=1, height=1))
    gate = model.lsgate(0)
    z = torch.randn(5, model.latent_dim)
    logits = gate.net(z)
    index = model.add_learner(_learners(["small"], seed=4)[0], "a")
    assert model.squad(0) == [0, index] and model.lsgate(0).num_learners == 2
    grown = model.lsgate(0).net(z)
    torch.testing.assert_close(grown[:, :1], logits)  # a wider matmul: equal up to rounding
    assert torch.equal(grown[:, 1], torch.zeros(5))
    assert model.lsgate(0).active.tolist() == [True, True]
    with pytest.raises(ValueError, match="geometry"):
        model.add_learner(StagedVAE(tier_spec("small", image_size=64)), "a")


def test_grow_latent_keeps_outputs_and_refuses_to_shrink():
    model = _spread(fuse(_learners(["small", "medium"]), [0, 0], ["a"], top_k=2, height=1))
    x, noise = torch.rand(4, 1, 32, 32), torch.randn(4, model.latent_dim)
    before = _outputs(model, 0, x, noise)
    model.grow_latent(model.latent_dim + 8)
    assert torch.equal(_outputs(model, 0, x, torch.cat([noise, torch.zeros(4, 8)], 1)), before)
    assert model.config.latent_dim == model.latent_dim
    with pytest.raises(ValueError, match="cannot shrink"):
        model.grow_latent(4)


def test_cut_squad_keeps_the_chosen_learners_and_slims_a_gate_of_one(tmp_path):
    full = fuse(_learners(["small", "medium", "small"]), [0, 0, 0], ["a"], top_k=2, height=1, cross_task=False)
    compact = partition(_spread(full), 0)
    compact.cut_squad([0, 2])
    assert compact.squad(0) == [0, 2] and compact.learner_tasks == [0, None, 0]
    assert compact.lsgate(0).num_learners == 2 and compact.gate_hidden == 64
    assert _rebuilt(compact, tmp_path).config == compact.config
    compact.cut_squad([2])
    assert compact.squad(0) == [2] and compact.gate_hidden == 1 and compact.lsgate(0).hidden == 1
    x, noise = torch.rand(4, 1, 32, 32), torch.randn(4, compact.latent_dim)
    alone = partition(compact, 0)  # learner 2 decodes alone, with weight 1, whatever the gate computes
    assert len(alone.learners) <= len(compact.learners)
    torch.testing.assert_close(_outputs(alone, 0, x, noise), _outputs(compact, 0, x, noise))
    with pytest.raises(ValueError, match="non-empty part of the squad"):
        compact.cut_squad([1])
    two_tasks = fuse(_learners(["small", "medium"]), [0, 1], ["a", "b"], top_k=1, height=1)
    with pytest.raises(ValueError, match="one task"):
        two_tasks.cut_squad([0])


def test_deselect_takes_a_learner_out_of_selection_but_never_the_last_one():
    model = fuse(_learners(["small", "medium", "small"]), [0, 0, 1], ["a", "b"], top_k=2, height=1)
    x = torch.rand(8, 1, 32, 32)
    model.deselect(1)
    assert not model.selectable(1) and model.selectable(0) and model.selectable(2)
    mu, _, _ = model.posterior(x, torch.zeros(8, dtype=torch.long))
    assert set(model.lsgate(0)(mu, 2, False).indices.flatten().tolist()) == {0}  # position 1 never picked
    with pytest.raises(ValueError, match="last selectable one of task 'a'"):
        model.deselect(0)
    with pytest.raises(ValueError, match="last selectable one of task 'b'"):
        model.deselect(2)
    with pytest.raises(ValueError, match="in no squad"):
        model.deselect(7)


def test_freeze_and_unfreeze_keep_the_config_in_step():
    model = fuse(_learners(["small", "medium"]), [0, 1], ["a", "b"], top_k=1, height=1)
    model.freeze([1, 0])
    assert model.config.frozen == (0, 1) and not any(p.requires_grad for p in model.learner(0).parameters())
    model.unfreeze([0])
    assert model.frozen_learners == {1} and all(p.requires_grad for p in model.learner(0).parameters())


def test_trim_and_pruning_change_the_config():
    model = BAIM.from_learners(
        _learners(["small", "medium", "large"]), [0, 0, 0], ["a"], [Connection("dec", 2, 1, 0, 2)], top_k=1
    )
    model.trim(2, "dec", 2)
    assert model.config.trimmed == {2: {"dec": 2}} and model.trimmed == {2: {"dec": 2}}
    assert model.prune_connections(1.0) == [Connection("dec", 2, 1, 0, 2).name]
    assert model.config.connections == () and dict(model.conn_keys) == {}
