"""A training budget: a fixed number of local epochs, or ``converged``.

Why both: at a fixed budget every method is under-trained and a method's gain can be extra
steps rather than collaboration; at ``converged`` every training stops on its own validation
data (patience, a cap, the best weights kept), so no method wins by being trained longer.

A fixed budget of ``b`` epochs: baim's edges train ``b`` epochs; local, central and KD train
``b``; the round-based methods (FedAvg, FD) and split learning get as many passes over an
edge's slice as baim's edges make (``b`` + the personalisation epochs). ``converged``: the
same with every count a cap of ``cap`` and early stopping after ``patience`` epochs (rounds)
without improvement, the BAIM's cloud training included (on the common data's validation
part, as the controls' cloud trainings do). Personalisation keeps the preset's epochs at both
budgets, for baim and for every method that personalises; so do the short fine-tune and the
distillation of baim's per-edge delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..compare.common import Settings
from ..config import Preset
from ..errors import ConfigError

CONVERGED = "converged"
# The most epochs (rounds) a converging training may take. A bound, not a budget: patience
# should end every training first. It was 30 until 2026-12-06, and 30 bound: at the tuned
# rates 10 of 12 edge learners of quick seeds 0-1 were still improving at epoch 30 (they
# stopped by patience between epochs 35 and 56, 2.7-6.2 % lower in validation loss, seed 0).
CAP = 100
# A converging round-based method scores its curve (test loss, likelihood bound) every this
# many rounds and after its last: scoring every round cost as much as the rounds' training
# (baim.compare.methods.federated._Curve). A fixed budget's few rounds are all scored.
CURVE_EVERY = 5


@dataclass(frozen=True)
class Budget:
    """``epochs`` for a fixed budget; ``None`` for converged (``cap`` and ``patience`` then)."""

    epochs: int | None
    cap: int = CAP
    patience: int = 3

    @property
    def name(self) -> str:
        return CONVERGED if self.epochs is None else str(self.epochs)

    def overrides(self) -> dict[str, Any]:
        """The run config's preset overrides for baim's workflow at this budget."""
        # No per-epoch test curves and no scoring of the BAIM itself: a study reads neither
        # (it scores what edges serve), and they cost ~9 % of an edge epoch and ~45 s a run.
        off = {"curve_test_per_task": 0, "cloud_evaluation": False}
        if self.epochs is None:
            converging = {"epochs": self.cap, "patience": self.patience}
            return {"edge": converging, "cloud": converging} | off
        return {"edge": {"epochs": self.epochs, "patience": 0}} | off

    def settings(self, preset: Preset) -> Settings:
        """The comparison's rounds and epochs at this budget."""
        if self.epochs is None:
            c = self.cap
            return Settings(
                rounds=c, local_epochs=1, sl_epochs=c, central_epochs=c, patience=self.patience, curve_every=CURVE_EVERY
            )
        passes = self.epochs + preset.personalize.epochs
        return Settings(rounds=passes, local_epochs=1, sl_epochs=passes, central_epochs=self.epochs)


def parse_budgets(text: str, cap: int = CAP, patience: int = 3) -> list[Budget]:
    """``"4,converged"`` → the budgets, in order."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part == CONVERGED:
            out.append(Budget(None, cap, patience))
        elif part.isdigit() and int(part) > 0:
            out.append(Budget(int(part), cap, patience))
        else:
            raise ConfigError(f"budget {part!r} is neither a number of epochs ≥ 1 nor {CONVERGED!r}; e.g. 4,converged")
    if not out or len({b.name for b in out}) != len(out):
        raise ConfigError(f"budgets {text!r}: give one or more distinct budgets, e.g. 4,converged")
    if cap < 1 or patience < 1:
        raise ConfigError(f"converged needs a cap ≥ 1 and a patience ≥ 1 (got {cap}, {patience})")
    return out
