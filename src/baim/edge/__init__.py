"""Edge-side work: local training, evaluation."""

from .node import build_learner, evaluate_edge_model, fid_of_model, train_edge, train_edge_cli
from .train import TrainConfig, TrainHistory, train_learner

__all__ = ["TrainConfig", "TrainHistory", "build_learner", "evaluate_edge_model", "fid_of_model",
           "train_edge", "train_edge_cli", "train_learner"]
