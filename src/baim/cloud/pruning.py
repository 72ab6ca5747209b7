"""Pruning: connections by |α|·‖P‖ on a schedule, and learners their gate never picks."""

from __future__ import annotations

import math

import torch

from .model import BAIM


def prune_connections(model: BAIM, ratio: float) -> list[str]:
    """Delete ``floor(ratio × surviving)`` connections with the smallest |α|·‖P‖ (global
    ranking). Deleted means gone from the module and from the parameter count."""
    if not 0 <= ratio <= 1:
        raise ValueError(f"prune ratio must be in [0, 1], got {ratio}")
    scored = sorted((proj.score(), name) for name, proj in model.connections.items())
    victims = [name for _, name in scored[: math.floor(ratio * len(scored))]]
    for name in victims:
        model.remove_connection(name)
    return victims


def prune_learners(model: BAIM, usage: dict[int, torch.Tensor], threshold: float = 0.01) -> list[int]:
    """Remove from selection every learner its LSGate picks for less than ``threshold`` of
    its task's assignments (``usage[task]`` = counts per squad position).

    A removed learner whose stages some kept learner still reads through a connection keeps
    only the stages needed (up to the deepest one read) and loses its heads' use; one nobody
    reads keeps no stages in the execution at all (its connections are deleted). At least
    one learner per squad always stays selectable.
    """
    dropped = []
    for t, counts in usage.items():
        gate = model.lsgates[t]
        total = float(counts.sum())
        if total == 0:
            continue
        order = counts.argsort(descending=True)
        for pos in range(len(counts)):
            if float(counts[pos]) / total < threshold and pos != int(order[0]) and bool(gate.active[pos]):
                gate.active[pos] = False
                dropped.append(model.squad(t)[pos])
    for l in dropped:
        _trim_feeder(model, l)
    return dropped


def _trim_feeder(model: BAIM, learner: int) -> None:
    """Keep only the decoder stages of a deselected learner that connections still read."""
    read = [c.src_stage for c in model.conn_keys.values() if c.side == "dec" and c.src == learner]
    keep = max(read) + 1 if read else 0
    for name, c in list(model.conn_keys.items()):
        if c.side == "dec" and c.dst == learner and c.dst_stage >= keep:
            model.remove_connection(name)
    model.trim(learner, "dec", keep)
