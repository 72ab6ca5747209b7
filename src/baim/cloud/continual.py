"""Continual learning: late uploads join a trained BAIM (DESIGN.md §3).

A new learner joins its task's squad (or opens a new task), gets its adapter, the gate of
its squad grows by one output, and every candidate connection that involves it is added
(α = 0, so the trained BAIM's outputs for other squads are unchanged). If the newcomer's
latent is larger than the shared one, the shared latent grows; existing adapters and gates
ignore the new coordinates (zero weights), and existing priors treat them as N(0, 1).
By default only the new parts and the gates train afterwards: :func:`add_learners` returns
the names of those parameters for :func:`baim.models.train_baim`'s ``trainable``.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import nn

from ..learners import StagedVAE
from ..models import BAIM, LatentPrior, LSGate, candidate_connections


@torch.no_grad()
def _grow_in(lin: nn.Linear, new_in: int) -> nn.Linear:
    out = nn.Linear(new_in, lin.out_features)
    out.weight.zero_()
    out.weight[:, : lin.in_features] = lin.weight
    out.bias.copy_(lin.bias)
    return out


@torch.no_grad()
def _grow_out(lin: nn.Linear, new_out: int) -> nn.Linear:
    out = nn.Linear(lin.in_features, new_out)
    out.weight.zero_()
    out.bias.zero_()
    out.weight[: lin.out_features] = lin.weight
    out.bias[: lin.out_features] = lin.bias
    return out


def _grow_latent(model: BAIM, dim: int) -> None:
    model.adapters = nn.ModuleList(_grow_in(a, dim) if isinstance(a, nn.Linear) else a for a in model.adapters)
    for t in range(len(model.lsgates)):
        g = model.lsgate(t)
        g.net[0] = _grow_in(cast(nn.Linear, g.net[0]), dim)
        g.noise = _grow_in(g.noise, dim)
        model.prior(t).grow(dim)
    model.latent_dim = dim


def _grow_gate(gate: LSGate) -> None:
    n = gate.num_learners + 1
    gate.net[2] = _grow_out(gate.out_layer, n)
    gate.noise = _grow_out(gate.noise, n)
    gate.active = torch.cat([gate.active, torch.ones(1, dtype=torch.bool)])


def add_learners(model: BAIM, newcomers: list[tuple[StagedVAE, str]], height: int | None = None) -> set[str]:
    """Add learners (with their task names) to ``model`` in place; return the names of the
    parameters that should train by default (new learners, adapters, connections, gates)."""
    height = model.height if height is None else height
    before = {n for n, _ in model.named_parameters()}
    first_new = len(model.learners)
    for learner, task_name in newcomers:
        spec = learner.spec
        if (spec.image_size, spec.channels) != (model.image_size, model.channels):
            raise ValueError(f"learner image geometry {spec.image_size}/{spec.channels} does not match the BAIM's")
        if spec.latent_dim > model.latent_dim:
            _grow_latent(model, spec.latent_dim)
        new_task = task_name not in model.task_names
        if new_task:
            model.task_names.append(task_name)
            model.lsgates.append(LSGate(model.latent_dim, 1, model.gate_hidden))
            model.priors.append(LatentPrior(model.latent_dim))
            if model.tsgate is not None:
                model.tsgate.net[-1] = _grow_out(cast(nn.Linear, model.tsgate.net[-1]), len(model.task_names))
        t = model.task_names.index(task_name)
        model.learners.append(copy.deepcopy(learner))
        model.learner_tasks.append(t)
        model.adapters.append(model._truncation(spec.latent_dim))
        if not new_task:
            _grow_gate(model.lsgate(t))
    counts = [
        (len(model.learner(l).encoder_stages), len(model.learner(l).decoder_stages)) for l in range(len(model.learners))
    ]
    for c in candidate_connections(counts, height):
        if (c.src >= first_new or c.dst >= first_new) and c.name not in model.conn_keys:
            model.add_connection(c)
    new = {n for n, _ in model.named_parameters()} - before
    gates = {n for n, _ in model.named_parameters() if n.startswith(("lsgates.", "tsgate."))}
    return new | gates
