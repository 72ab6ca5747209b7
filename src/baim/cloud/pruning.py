"""Learner-level pruning: learners their LSGate (almost) never picks leave selection.

Connection pruning is the BAIM's own (:meth:`baim.models.BAIM.prune_connections`), since
the training loop runs it on a schedule."""

from __future__ import annotations

import torch

from ..models import BAIM


def prune_learners(model: BAIM, usage: dict[int, torch.Tensor], threshold: float = 0.01) -> list[int]:
    """Remove from selection every learner its LSGate picks for less than ``threshold`` of
    its task's assignments (``usage[task]`` = counts per squad position).

    A removed learner whose stages some kept learner still reads through a connection keeps
    only the stages needed (up to the deepest one read) and loses its heads' use; one nobody
    reads keeps no stages in the execution at all (its connections are deleted). At least
    one learner per squad always stays selectable.
    """
    dropped: list[int] = []
    for t, counts in usage.items():
        gate = model.lsgate(t)
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
