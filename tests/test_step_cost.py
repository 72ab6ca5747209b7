"""A fixed-cost fit counts one step per batch shape through the FLOP counter and books it for
the others: the same FLOP totals, the same weights, less time inside the counter."""

import torch

from baim.compare.measure import Meter
from baim.config import Recipe
from baim.learners import StagedVAE, tier_spec
from baim.models import Loss, fit, vae_objective

RECIPE = Recipe(epochs=2, batch_size=8, seed=3)


def _images(n: int = 20) -> torch.Tensor:
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(0))


def _fit(fixed_cost: bool, objective=None, phase_inside: bool = False):
    """Train a small learner inside a counting meter; returns (edge flops, cloud flops, the
    learner's weights, for every step whether the counter was intercepting it)."""
    torch.manual_seed(0)
    model = StagedVAE(tier_spec("small"))
    meter = Meter()
    counted: list[bool] = []
    base = objective or vae_objective(0.00025)

    def watched(m, batch, step):
        counted.append(meter.active)
        if phase_inside:  # the step's work goes to two owners: not a fixed cost
            with meter.cloud():
                m.decode(m.encode(batch[0][:2])[0])
        return base(m, batch, step)

    with meter.counting(), meter.edge():
        fit(model, (_images(),), RECIPE, watched, fixed_cost=fixed_cost)
    return meter.totals("edge")[1], meter.totals("cloud")[1], model.state_dict(), counted


def test_a_fixed_cost_fit_books_the_same_flops_and_trains_the_same_weights():
    edge, cloud, weights, counted = _fit(False)
    edge_fixed, cloud_fixed, weights_fixed, counted_fixed = _fit(True)
    assert edge_fixed == edge > 0 and cloud == cloud_fixed == 0
    assert all(torch.equal(weights[k], weights_fixed[k]) for k in weights)
    # 20 images in batches of 8: shapes 8 and 4; only each shape's first step is intercepted
    assert counted == [True] * 6
    assert counted_fixed == [True, False, True, False, False, False]


def test_a_step_whose_loss_is_not_finite_books_its_forward_only():
    """A skipped step has no backward: forward and backward are cached apart."""
    vae = vae_objective(0.00025)

    def sometimes_nan(m, batch, step):
        loss = vae(m, batch, step)
        if step == 3:  # a cached shape's step: its forward counts, no backward follows
            return Loss(loss.total * float("nan"), loss.terms)
        return loss

    edge, _, _, _ = _fit(False, sometimes_nan)
    edge_fixed, _, _, _ = _fit(True, sometimes_nan)
    assert edge_fixed == edge
    full, _, _, _ = _fit(False)
    assert edge < full  # the skipped backward is really missing from both


def test_a_step_that_changes_sides_is_never_cached():
    edge, cloud, _, _ = _fit(False, phase_inside=True)
    edge_fixed, cloud_fixed, _, counted_fixed = _fit(True, phase_inside=True)
    assert (edge_fixed, cloud_fixed) == (edge, cloud) and cloud > 0
    assert all(counted_fixed)


def test_without_a_counting_meter_a_fixed_cost_fit_is_a_plain_fit():
    torch.manual_seed(0)
    a = StagedVAE(tier_spec("small"))
    b = StagedVAE(tier_spec("small"))
    b.load_state_dict(a.state_dict())
    fit(a, (_images(),), RECIPE, vae_objective(0.00025))
    meter = Meter()
    with meter.counting(), meter.edge(), meter.paused():
        fit(b, (_images(),), RECIPE, vae_objective(0.00025), fixed_cost=True)
    assert meter.totals("edge")[1] == 0
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_a_fixed_cost_fits_validation_is_counted_once_and_books_the_same_flops():
    """Validation scores the same held-out images every epoch: the first epoch's count is
    booked for the others, the totals unchanged."""
    from baim.models import reconstruction_metrics

    held_out = (_images(12) * 255).to(torch.uint8).numpy()

    def run(fixed_cost: bool) -> tuple[int, list[float]]:
        torch.manual_seed(0)
        model = StagedVAE(tier_spec("small"))
        meter = Meter()

        def validate(m) -> float:
            return reconstruction_metrics(m, held_out, kld_weight=0.00025, seed=0)["test_loss"]

        with meter.counting(), meter.edge():
            done = fit(model, (_images(),), RECIPE, vae_objective(0.00025), validate=validate, fixed_cost=fixed_cost)
        return meter.totals("edge")[1], [row["val_loss"] for row in done.epochs]

    flops, vals = run(False)
    flops_fixed, vals_fixed = run(True)
    assert flops_fixed == flops and vals_fixed == vals
    assert flops > _fit(False)[0]  # validation's forward passes are in both counts


def test_a_test_curve_is_not_counted_as_training():
    """A per-epoch test curve is reporting, not the edge's work: training with one books
    the same FLOPs as training without."""
    from baim.edge.train import train_learner

    images = (_images() * 255).to(torch.uint8).numpy()
    curve = (_images(16) * 255).to(torch.uint8).numpy()

    def run(eval_images) -> tuple[int, list[dict]]:
        torch.manual_seed(0)
        model = StagedVAE(tier_spec("small"))
        meter = Meter()
        with meter.counting(), meter.edge():
            hist = train_learner(model, images, RECIPE, eval_images=eval_images)
        return meter.totals("edge")[1], hist.epochs

    plain, rows = run(None)
    with_curve, curve_rows = run(curve)
    assert with_curve == plain > 0
    assert "test_loss" not in rows[0] and all("test_loss" in r for r in curve_rows)
