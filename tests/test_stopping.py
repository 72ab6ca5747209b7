"""How a converging training ended: by its patience, or at its cap (not known to be converged)."""

import torch

from baim.config import Recipe
from baim.learners import StagedVAE, tier_spec
from baim.models import fit, vae_objective
from baim.models.fit import EarlyStopping, stopping_counts, stopping_record


def _fit(scores):
    torch.manual_seed(0)
    model = StagedVAE(tier_spec("small"))
    it = iter(scores)
    x = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    recipe = Recipe(epochs=len(scores), batch_size=8, patience=2)
    return fit(model, (x,), recipe, vae_objective(0.00025), validate=lambda m: next(it))


def test_a_record_tells_trainings_stopped_by_patience_from_those_that_ran_to_the_cap():
    with stopping_record() as seen:
        _fit([0.5, 0.4, 0.3, 0.2])  # still improving at its cap of 4 epochs
        done = _fit([0.5, 0.4, 0.45, 0.46, 0.1, 0.1])  # two epochs without improvement: stops at 4
        stopper = EarlyStopping(3)  # made, never updated: no training to count
    assert len(done.epochs) == 4 and done.best_epoch == 2
    assert stopping_counts(seen) == {"by_patience": 1, "at_cap": 1}
    assert stopper.outcome in seen and len(seen) == 3
    with stopping_record() as outer:
        with stopping_record() as inner:
            EarlyStopping(1)
        EarlyStopping(1)
    assert len(inner) == 1 and len(outer) == 2  # nested records, each closed in its turn
    with stopping_record() as later:
        pass
    assert later == []  # a record holds only what was made inside it
