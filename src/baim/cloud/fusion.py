"""Fusing uploads into a BAIM, with one of the three strategies (DESIGN.md §3).

- ``finetune``: start from the uploaded weights, train everything.
- ``freeze``: uploaded weights and normalisation statistics stay fixed; gates, adapters,
  connections (and TSGate's classifier) train.
- ``scratch``: the same specs with fresh random weights, train everything.
"""

from __future__ import annotations

import copy

import torch

from ..learners import StagedVAE
from .connections import candidate_connections
from .model import BAIM

STRATEGIES = ("finetune", "freeze", "scratch")


def fuse(learners: list[StagedVAE], learner_tasks: list[int], task_names: list[str], strategy: str = "finetune",
         top_k: int = 2, height: int = 3, seed: int = 0, connections: bool = True) -> BAIM:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    missing = [t for t in range(len(task_names)) if t not in learner_tasks]
    if missing:
        raise ValueError(f"tasks {[task_names[t] for t in missing]} have no learner; every task needs a squad")
    # scratch draws its weights from a stream of its own, so a seed shared with the edges
    # can never hand it the edges' initial weights
    torch.manual_seed(seed + 104_729 if strategy == "scratch" else seed)
    if strategy == "scratch":
        members = [StagedVAE(l.spec) for l in learners]
    else:
        members = [copy.deepcopy(l) for l in learners]
    counts = [(m.spec.num_stages, m.spec.num_stages) for m in members]
    conns = candidate_connections(counts, height) if connections else []
    model = BAIM(members, list(learner_tasks), task_names, conns, top_k=top_k, height=height)
    if strategy == "freeze":
        freeze_learners(model, range(len(members)))
    return model


def freeze_learners(model: BAIM, learners) -> None:
    for l in learners:
        model.frozen_learners.add(l)
        for p in model.learners[l].parameters():
            p.requires_grad_(False)
        model.learners[l].eval()
