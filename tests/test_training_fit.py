"""The one training loop: warm-up, clipping, the divergence guard, decay and the epoch rows."""

import pytest
import torch
from torch import nn

from baim.config import Recipe
from baim.errors import ConfigError, TrainingDiverged
from baim.models import Loss, fit


def _linear(seed: int = 0) -> tuple[nn.Linear, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Linear(4, 1)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 4, generator=g)
    return model, (x, x.sum(1, keepdim=True) * 3)


def _mse(model: nn.Module, batch: tuple[torch.Tensor, ...], step: int) -> Loss:
    x, y = batch
    loss = ((model(x) - y) ** 2).mean()
    return Loss(loss, {"loss": loss})


def test_warm_up_ramps_the_rate_per_step_then_decays_per_epoch():
    model, data = _linear()
    seen: list[float] = []
    opt = torch.optim.SGD(model.parameters(), lr=1.0)

    def objective(m, batch, step):
        seen.append(opt.param_groups[0]["lr"])
        return _mse(m, batch, step)

    recipe = Recipe(epochs=2, batch_size=8, lr=0.1, lr_decay=0.5, warmup_steps=3)
    done = fit(model, data, recipe, objective, optimizer=opt)
    expected = [0.1 / 3, 0.2 / 3, 0.1, 0.1] + [0.05] * 4
    assert seen == pytest.approx(expected)
    assert [r["lr"] for r in done.epochs] == pytest.approx([0.1, 0.05])


def test_a_group_scale_multiplies_its_rate():
    model, data = _linear()
    opt = torch.optim.SGD([{"params": [model.weight], "scale": 0.25}, {"params": [model.bias]}], lr=1.0)
    rates: list[tuple[float, float]] = []

    def objective(m, batch, step):
        rates.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
        return _mse(m, batch, step)

    fit(model, data, Recipe(epochs=1, batch_size=16, lr=0.2), objective, optimizer=opt)
    assert rates == [(pytest.approx(0.05), pytest.approx(0.2))] * 2


def test_clipping_bounds_the_gradient_norm():
    model, (x, y) = _linear()
    fit(model, (x, y * 1000), Recipe(epochs=1, batch_size=32, grad_clip=0.5), _mse)
    # the last step's gradients are still there: clipped to at most grad_clip
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm <= 0.5 + 1e-5


def test_a_non_finite_step_is_skipped_reported_and_leaves_the_weights_alone():
    model, data = _linear()
    weights: list[torch.Tensor] = []

    def objective(m, batch, step):
        weights.append(m.weight.detach().clone())
        loss = _mse(m, batch, step)
        if step == 1:
            return Loss(loss.total * float("nan"), loss.terms)
        return loss

    done = fit(model, data, Recipe(epochs=1, batch_size=8), objective)
    assert done.skipped_steps == 1 and done.epochs[0]["train_loss"] > 0
    assert torch.equal(weights[1], weights[2])  # the skipped step changed nothing
    assert not torch.equal(weights[0], weights[1])  # the kept ones did
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_an_epoch_of_nothing_but_non_finite_steps_is_divergence():
    model, data = _linear()

    def poisoned(m, batch, step):
        loss = _mse(m, batch, step)
        return Loss(loss.total * float("inf"), loss.terms)

    with pytest.raises(TrainingDiverged, match="probe diverged in epoch 1: all 4 steps"):
        fit(model, data, Recipe(epochs=2, batch_size=8), poisoned, label="probe")


def test_taken_runs_only_for_applied_steps_and_end_epoch_makes_the_row():
    model, data = _linear()
    taken: list[int] = []

    def objective(m, batch, step):
        loss = _mse(m, batch, step)
        total = loss.total * float("nan") if step == 2 else loss.total
        return Loss(total, loss.terms, lambda: taken.append(step))

    done = fit(
        model,
        data,
        Recipe(epochs=1, batch_size=8),
        objective,
        end_epoch=lambda ep: {"epoch": ep.number, "kept": ep.seen, "skipped": ep.skipped},
    )
    assert taken == [0, 1, 3]
    assert done.epochs == [{"epoch": 1, "kept": 24, "skipped": 1}]


def test_the_schedule_position_and_a_kept_optimizer_carry_across_calls():
    model, data = _linear()
    steps: list[int] = []

    def objective(m, batch, step):
        steps.append(step)
        return _mse(m, batch, step)

    recipe = Recipe(epochs=1, batch_size=16, lr=0.1, lr_decay=0.5)
    first = fit(model, data, recipe, objective, generator=torch.Generator().manual_seed(0))
    second = fit(model, data, recipe, objective, optimizer=first.optimizer, first_epoch=1, generator=torch.Generator())
    assert second.optimizer is first.optimizer and steps == [0, 1, 2, 3]
    assert second.epochs[0]["epoch"] == 2 and second.epochs[0]["lr"] == pytest.approx(0.05)
    assert not model.training


def test_early_stopping_stops_after_patience_and_restores_the_best_epoch():
    model, data = _linear()
    scores = iter([3.0, 1.0, 2.0, 2.5, 0.5, 0.1])  # best after epoch 2; epochs 3 and 4 do not improve
    weights: list[torch.Tensor] = []

    def validate(m):
        weights.append(m.weight.detach().clone())
        return next(scores)

    done = fit(model, data, Recipe(epochs=6, batch_size=8, patience=2), _mse, validate=validate)
    assert [r["epoch"] for r in done.epochs] == [1, 2, 3, 4]  # stopped: 2 epochs without improvement
    assert [r["val_loss"] for r in done.epochs] == [3.0, 1.0, 2.0, 2.5]
    assert done.best_epoch == 2 and done.stopped_early
    assert torch.equal(model.weight, weights[1]) and not torch.equal(model.weight, weights[3])


def test_without_patience_every_epoch_runs_and_the_last_weights_stay():
    model, data = _linear()
    done = fit(model, data, Recipe(epochs=3, batch_size=8), _mse, validate=lambda m: 1.0)
    assert [r["val_loss"] for r in done.epochs] == [1.0, 1.0, 1.0]
    assert done.best_epoch == 3 and not done.stopped_early


def test_early_stopping_without_validation_data_is_refused():
    model, data = _linear()
    with pytest.raises(ConfigError, match="validation"):
        fit(model, data, Recipe(epochs=3, patience=2), _mse)
    with pytest.raises(ConfigError, match="patience"):
        Recipe(epochs=3, patience=-1)


def test_a_recipe_override_replaces_only_the_fields_it_names():
    from baim.presets import get_preset

    p = get_preset("quick").with_overrides(edge={"epochs": 30, "patience": 3})
    assert (p.edge.epochs, p.edge.patience, p.edge.lr) == (30, 3, get_preset("quick").edge.lr)
    with pytest.raises(ConfigError, match="edge recipe"):
        get_preset("quick").with_overrides(edge={"epoch": 3})
