"""Fusing uploads into a BAIM, with one of the three strategies.

- ``finetune``: start from the uploaded weights, train everything (gently: see
  :class:`baim.config.Recipe`'s ``trained_lr_scale``, ``keep_norm_stats``, ``warmup_steps``).
- ``freeze``: uploaded weights and normalisation statistics stay fixed; gates, adapters,
  connections (and TSGate's classifier) train.
- ``scratch``: the same specs with fresh random weights, train everything.
"""

from __future__ import annotations

import copy
import math

import torch

from ..config import STRATEGIES
from ..errors import ConfigError
from ..learners import StagedVAE
from ..models import BAIM, Connection, candidate_connections


def fuse(
    learners: list[StagedVAE],
    learner_tasks: list[int],
    task_names: list[str],
    strategy: str = "finetune",
    top_k: int = 2,
    height: int = 3,
    seed: int = 0,
    connections: bool = True,
    screening_losses: list[float] | None = None,
    cross_task: bool = True,
    projection_rank: int = 0,
    max_sources: int = 0,
) -> BAIM:
    """The BAIM of ``learners`` (uploads) for ``strategy``. With ``screening_losses`` (each
    upload's loss on the cloud's common data), every LSGate starts out preferring its squad's
    best-screened learner (weight ≈ 0.9 of two), so the fused model begins where the best edge is
    rather than at an even mix of unrelated decoders; ``scratch`` ignores them (no trained weights).
    Without ``cross_task``, candidate connections join only learners of the same squad (to
    measure what the other tasks' learners add). With ``max_sources`` > 0 each learner's stages
    read from at most that many other learners (see :func:`limit_sources`)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
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
    candidates = candidate_connections(counts, height) if connections else []
    if not cross_task:
        candidates = [c for c in candidates if learner_tasks[c.src] == learner_tasks[c.dst]]
    if max_sources:
        candidates = limit_sources(candidates, max_sources, seed)
    model = BAIM.from_learners(
        members,
        list(learner_tasks),
        task_names,
        candidates,
        top_k=top_k,
        height=height,
        projection_rank=projection_rank,
        frozen=list(range(len(members))) if strategy == "freeze" else [],
    )
    if screening_losses is not None and strategy != "scratch":
        prefer_best(model, screening_losses)
    return model


def limit_sources(candidates: list[Connection], max_sources: int, seed: int = 0) -> list[Connection]:
    """Keep, for every learner and side, the candidates from at most ``max_sources`` source
    learners drawn at random (seeded). All-pairs candidates grow ∝ N², and so do the BAIM's
    first epoch, whose every row runs all of them, and its memory; a bounded fan-in keeps both
    ∝ N while every learner can still read from other squads."""
    if max_sources < 1:
        raise ConfigError(f"max_sources is ≥ 1 (0 in a preset: no limit), got {max_sources}")
    sources: dict[tuple[str, int], list[int]] = {}
    for c in candidates:
        have = sources.setdefault((c.side, c.dst), [])
        if c.src not in have:
            have.append(c.src)
    gen = torch.Generator().manual_seed(seed)
    kept = {}
    for key, srcs in sources.items():
        order = torch.randperm(len(srcs), generator=gen).tolist()
        kept[key] = {srcs[i] for i in order[:max_sources]}
    return [c for c in candidates if c.src in kept[(c.side, c.dst)]]


GATE_PREFERENCE = math.log(9.0)  # softmax over two kept logits: 0.9 vs 0.1


@torch.no_grad()
def prefer_best(model: BAIM, losses: list[float]) -> None:
    """Bias each LSGate towards the learner of its squad with the lowest loss."""
    for t in range(len(model.task_names)):
        squad = model.squad(t)
        best = min(range(len(squad)), key=lambda pos: losses[squad[pos]])
        model.lsgate(t).out_layer.bias[best] = GATE_PREFERENCE
