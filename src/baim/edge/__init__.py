"""What only an edge does: train its learner on private data, answer the cloud's messages,
personalise its compact model. It imports the model layer, never the cloud."""

from .local import build_learner, evaluate_saved_model, train_edge, train_edge_cli, train_on_images
from .node import EdgeNode
from .personalize import personalize
from .train import TrainHistory, train_learner

__all__ = [
    "EdgeNode",
    "TrainHistory",
    "build_learner",
    "evaluate_saved_model",
    "personalize",
    "train_edge",
    "train_edge_cli",
    "train_learner",
    "train_on_images",
]
