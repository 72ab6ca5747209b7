"""Continual learning as the workflow uses it (:func:`baim.cloud.integrate`): a newcomer for a
new task or a known squad grows a trained BAIM; what it does not touch stays identical."""

import numpy as np
import pytest
import torch

from baim.cloud import fuse
from baim.cloud.continual import integrate
from baim.config import Recipe
from baim.learners import StagedVAE, tier_spec
from baim.models import load_model, save_model


def _learner(tier: str, seed: int) -> StagedVAE:
    torch.manual_seed(seed)
    m = StagedVAE(tier_spec(tier))
    m.train()
    m(torch.rand(16, 1, 32, 32))  # non-trivial BatchNorm statistics
    return m.eval()


def _images(n: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 32, 32, generator=g) * 255).to(torch.uint8).numpy()


def _trained_baim():
    """Two tasks whose learners feed each other through connections that carry something
    (α ≠ 0, as after training): a change to a's learners would reach b through them."""
    model = fuse([_learner("small", 0), _learner("medium", 1), _learner("small", 2)], [0, 0, 1], ["a", "b"], height=1)
    with torch.no_grad():
        for proj in model.connections.values():
            proj.alpha.fill_(0.3)
    assert any(c.src in (0, 1) and c.dst == 2 for c in model.conn_keys.values())  # a feeds b
    return model.eval()


Z = torch.randn(8, 32, generator=torch.Generator().manual_seed(5))  # the old shared latent (small/medium: ≤ 32)


@torch.no_grad()
def _outputs(model, x: np.ndarray, task: int) -> torch.Tensor:
    """Reconstructions from z = μ and decodings of fixed codes (zero on coordinates a grown
    latent added: the old adapters and gates read nothing from them)."""
    t = torch.full((len(x),), task, dtype=torch.long)
    xf = torch.from_numpy(x).float() / 255
    z = torch.nn.functional.pad(Z, (0, model.latent_dim - Z.shape[1]))
    return torch.cat([model(xf, t, sample=False).x_hat, model.decode(z, t[:8])[0]])


RECIPE = Recipe(epochs=1, batch_size=16, trained_lr_scale=0.1, keep_norm_stats=True)


@pytest.mark.parametrize("newcomer", [("large", "c"), ("small", "a")])
def test_frozen_old_tasks_give_identical_outputs_after_a_newcomer(newcomer):
    """The forgetting test: a new task (with a larger latent) or a new member of squad a joins;
    task b, untouched, gives the same reconstructions and the same decodings of the same z."""
    model = _trained_baim()
    x = _images(12, 7)
    before = _outputs(model, x, 1)
    tier, task = newcomer
    names = ["a"] * 16 + ["b"] * 16 + ([task] * 16 if task == "c" else [])
    report = integrate(model, [(_learner(tier, 9), task)], _images(len(names), 3), names, RECIPE, test_sets={"b": x})
    after = _outputs(model, x, 1)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    assert report["untouched_tasks"] == [n for n in ("a", "b") if n != task]
    assert report["untouched_max_abs_diff"] <= 1e-6
    assert report["touched_tasks"] == [task]
    assert report["parameters_after"] > report["parameters_before"]
    # no new connection ends in a learner b executes: b's own, or a's learners that feed it
    assert not [c for c in model.conn_keys.values() if c.src >= 3 and c.dst in (0, 1, 2)]


def test_new_task_gets_squad_gate_prior_and_trains_while_old_weights_stay():
    model = _trained_baim()
    old = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("learners.0.", "lsgates.1."))}
    names = ["a"] * 16 + ["b"] * 16 + ["c"] * 32
    report = integrate(model, [(_learner("large", 9), "c")], _images(len(names), 3), names, RECIPE)
    assert model.task_names == ["a", "b", "c"] and report["new_tasks"] == ["c"]
    assert model.squad(2) == [3] and bool(model.prior(2).fitted)
    state = model.state_dict()
    for k, v in old.items():  # the grown latent adds zero columns to the gate's first layer
        got = state[k][tuple(slice(0, n) for n in v.shape)]
        assert torch.equal(got, v), k
        assert not state[k].flatten().count_nonzero() > v.flatten().count_nonzero(), k
    assert 0 < report["trained_parameters"] < report["parameters_after"]
    assert not model.frozen_learners  # the old learners were fixed only for the integration
    assert all(p.requires_grad for p in model.learner(0).parameters())


def test_grown_baim_saves_loads_and_partitions(tmp_path):
    from baim.cloud import partition

    model = _trained_baim()
    names = ["a"] * 16 + ["b"] * 16 + ["c"] * 16
    integrate(model, [(_learner("medium", 4), "c"), (_learner("small", 5), "b")], _images(48, 3), names, RECIPE)
    back = load_model(save_model(model, tmp_path / "m"), "baim")
    x = torch.from_numpy(_images(6, 1)).float() / 255
    noise = torch.randn(6, model.latent_dim)
    for t in range(3):
        tt = torch.full((6,), t, dtype=torch.long)
        with torch.no_grad():
            want = model(x, tt, noise=noise).x_hat
            torch.testing.assert_close(back(x, tt, noise=noise).x_hat, want, atol=1e-6, rtol=0)
            compact = partition(model, t)
            got = compact(x, torch.zeros(6, dtype=torch.long), noise=noise).x_hat
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_train_old_changes_old_tasks_and_is_reported():
    model = _trained_baim()
    x = _images(12, 7)
    names = ["a"] * 16 + ["b"] * 16
    report = integrate(
        model, [(_learner("small", 9), "a")], _images(32, 3), names, RECIPE, train_old=True, test_sets={"b": x}
    )
    assert report["train_old"] and report["untouched_tasks"] == ["b"]
    assert report["untouched_max_abs_diff"] > 1e-6  # b's learner trained: its outputs moved


def test_common_data_of_an_unknown_task_is_refused():
    with pytest.raises(ValueError, match="neither the BAIM nor a newcomer"):
        integrate(_trained_baim(), [(_learner("small", 9), "a")], _images(4, 1), ["a", "a", "b", "zz"], RECIPE)
