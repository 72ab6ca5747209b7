"""The cloud side: fusing uploads into a BAIM, training it, pruning it, growing it."""

from .connections import Connection, Projection, candidate_connections
from .continual import add_learners
from .fusion import STRATEGIES, freeze_learners, fuse
from .gates import LSGate, TaskClassifier
from .io import load_baim, save_baim
from .model import BAIM, BAIMOutput
from .pruning import prune_connections, prune_learners
from .train import CloudConfig, evaluate_baim, fit_priors, task_accuracy, train_baim

__all__ = ["BAIM", "BAIMOutput", "CloudConfig", "Connection", "LSGate", "Projection", "STRATEGIES",
           "TaskClassifier", "add_learners", "candidate_connections", "evaluate_baim", "fit_priors",
           "freeze_learners", "fuse", "load_baim", "prune_connections", "prune_learners", "save_baim",
           "task_accuracy", "train_baim"]
