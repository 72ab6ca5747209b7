"""The model layer that cloud and edges share: the BAIM and its parts (gates, connections,
latent priors), compact models (BAIMs of one task), one save/load, one training loop (``fit``)
and one evaluation."""

from .baim import BAIM, BAIMOutput, as_compact
from .baim_config import BAIMConfig
from .connections import Connection, LowRankProjection, Projection, candidate_connections
from .evaluation import Evaluation, evaluate, fit_priors, generate, nll_bpd, reconstruction_metrics, task_accuracy
from .fit import Epoch, Fitted, Loss, Objective, fit, vae_objective
from .gates import LSGate, TaskClassifier
from .io import is_saved, load_model, model_from, save_model, to_parts
from .prior import LatentPrior
from .training import train_baim

__all__ = [
    "BAIM",
    "BAIMConfig",
    "BAIMOutput",
    "Connection",
    "Epoch",
    "Evaluation",
    "Fitted",
    "Loss",
    "Objective",
    "LSGate",
    "LatentPrior",
    "LowRankProjection",
    "Projection",
    "TaskClassifier",
    "as_compact",
    "candidate_connections",
    "evaluate",
    "fit",
    "fit_priors",
    "generate",
    "is_saved",
    "load_model",
    "model_from",
    "nll_bpd",
    "reconstruction_metrics",
    "save_model",
    "task_accuracy",
    "to_parts",
    "train_baim",
    "vae_objective",
]
