"""The hierarchical gate: TSGate picks the task (squad), a per-task LSGate picks top-K learners.

The LSGate sees the shared latent z, not the image: at generation time there is no image,
and the same gate must serve reconstruction (z from the posterior) and generation (z from
the latent prior).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def grow_inputs(lin: nn.Linear, new_in: int) -> nn.Linear:
    """``lin`` reading ``new_in`` inputs; the new ones have zero weight, so outputs are unchanged."""
    out = nn.Linear(new_in, lin.out_features)
    out.weight.zero_()
    out.weight[:, : lin.in_features] = lin.weight
    out.bias.copy_(lin.bias)
    return out


@torch.no_grad()
def grow_outputs(lin: nn.Linear, new_out: int) -> nn.Linear:
    """``lin`` with ``new_out`` outputs; the new ones are zero (a fresh logit starts even)."""
    out = nn.Linear(lin.in_features, new_out)
    out.weight.zero_()
    out.bias.zero_()
    out.weight[: lin.out_features] = lin.weight
    out.bias[: lin.out_features] = lin.bias
    return out


@dataclass
class Routing:
    """Top-K choice for a batch routed to one squad."""

    indices: torch.Tensor  # (n, k) positions within the squad
    weights: torch.Tensor  # (n, k) softmax over the kept logits
    logits: torch.Tensor  # (n, squad) clean logits, for the auxiliary losses


class LSGate(nn.Module):
    """Shazeer-style noisy top-K gate over a squad, from z."""

    active: torch.Tensor  # bool mask of selectable learners (a buffer)

    def __init__(self, latent_dim: int, num_learners: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_learners))
        self.noise = nn.Linear(latent_dim, num_learners)
        nn.init.zeros_(self.out_layer.weight)
        nn.init.zeros_(self.out_layer.bias)
        nn.init.zeros_(self.noise.weight)
        nn.init.zeros_(self.noise.bias)
        # Learners dropped by learner-level pruning are masked out of selection.
        self.register_buffer("active", torch.ones(num_learners, dtype=torch.bool))

    @property
    def out_layer(self) -> nn.Linear:
        """The last layer of the logit network (zero-initialised; grown by continual learning)."""
        return cast(nn.Linear, self.net[2])

    @property
    def num_learners(self) -> int:
        return int(self.active.numel())

    @property
    def hidden(self) -> int:
        return cast(nn.Linear, self.net[0]).out_features

    def grow_latent(self, dim: int) -> None:
        """Read a wider latent; the new coordinates have zero weight (choices unchanged)."""
        self.net[0] = grow_inputs(cast(nn.Linear, self.net[0]), dim)
        self.noise = grow_inputs(self.noise, dim)

    def add_learner(self) -> None:
        """One more output, zero-initialised and selectable (a learner joined the squad)."""
        n = self.num_learners + 1
        self.net[2] = grow_outputs(self.out_layer, n)
        self.noise = grow_outputs(self.noise, n)
        self.active = torch.cat([self.active, torch.ones(1, dtype=torch.bool)])

    def select(self, positions: list[int]) -> LSGate:
        """A gate over the squad positions ``positions`` only (its output rows selected).
        With one selectable position left, a gate of hidden width 1 and zero weights: top-K
        then picks that learner with weight 1, exactly what any gate would do."""
        rows = torch.tensor(positions, dtype=torch.long)
        latent_dim = cast(nn.Linear, self.net[0]).in_features
        active = self.active[rows]
        if int(active.sum()) == 1:
            slim = LSGate(latent_dim, len(positions), 1)  # zero-initialised output and noise layers
            slim.active.copy_(active)
            return slim
        smaller = LSGate(latent_dim, len(positions), self.hidden)
        state = self.state_dict()
        for key in ("net.2.weight", "net.2.bias", "noise.weight", "noise.bias", "active"):
            state[key] = state[key][rows]
        smaller.load_state_dict(state)
        return smaller

    def forward(self, z: torch.Tensor, k: int, noisy: bool) -> Routing:
        logits = self.net(z)
        scores = logits
        if noisy:
            scores = logits + torch.randn_like(logits) * F.softplus(self.noise(z))
        scores = scores.masked_fill(~self.active, float("-inf"))
        k = min(k, int(self.active.sum()))
        top, idx = scores.topk(k, dim=1)
        if noisy:
            # the weights use the clean logits of the chosen learners, so gradients reach
            # the gate even though the choice itself is not differentiable
            top = logits.gather(1, idx)
        return Routing(idx, torch.softmax(top, dim=1), logits.masked_fill(~self.active, float("-inf")))


def load_balance_loss(routing: Routing) -> torch.Tensor:
    """Switch-style f·P: fraction of assignments × mean router probability, per learner."""
    n = routing.logits.shape[1]
    probs = torch.softmax(routing.logits, dim=1)
    counts = torch.zeros(n, device=probs.device).index_add_(
        0, routing.indices.flatten(), torch.ones(routing.indices.numel(), device=probs.device)
    )
    f = counts / routing.indices.numel()
    return n * (f * probs.mean(0)).sum()


def router_z_loss(routing: Routing) -> torch.Tensor:
    finite = routing.logits.masked_fill(torch.isinf(routing.logits), -1e4)
    return torch.logsumexp(finite, dim=1).pow(2).mean()


class TaskClassifier(nn.Module):
    """TSGate's classifier for bare images (requests that name no task)."""

    def __init__(self, channels: int, image_size: int, num_tasks: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(32 * 16, num_tasks),
        )

    def add_task(self) -> None:
        """One more task to tell apart (its logit starts at zero)."""
        last = cast(nn.Linear, self.net[-1])
        self.net[-1] = grow_outputs(last, last.out_features + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
