"""``baim study``: every method of ``baim compare`` at several training budgets and seeds, with
paired differences to baim and their bootstrap intervals."""

from .budget import CONVERGED, Budget, parse_budgets
from .paired import paired_differences
from .runner import STUDY_METHODS, run_study

__all__ = ["CONVERGED", "STUDY_METHODS", "Budget", "paired_differences", "parse_budgets", "run_study"]
