"""Projection connections between learners' stages (DESIGN.md §3).

A connection (a, i) → (b, j) adds ``α · P(f(a, i))`` to the output of stage j of learner b,
where f(a, i) is the *raw* output of stage i of learner a. Candidates: every ordered pair of
distinct learners, encoder→encoder or decoder→decoder only (sampling runs no encoder, so
nothing may cross the latent bottleneck), with ``0 ≤ j − i ≤ h``. Because sources are raw
features and j ≥ i, the computation can proceed depth by depth, which makes the graph
acyclic by construction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

SIDES = ("enc", "dec")


@dataclass(frozen=True, order=True)
class Connection:
    side: str  # "enc" or "dec"
    src: int
    src_stage: int
    dst: int
    dst_stage: int

    @property
    def name(self) -> str:
        return f"{self.side}_{self.src}_{self.src_stage}_to_{self.dst}_{self.dst_stage}"

    def to_dict(self) -> dict:
        return asdict(self)


def candidate_connections(stage_counts: list[tuple[int, int]], height: int) -> list[Connection]:
    """All candidates for learners with ``(encoder stages, decoder stages)`` each."""
    if height < 0:
        raise ValueError(f"connection height must be ≥ 0, got {height}")
    out = []
    for side, k in (("enc", 0), ("dec", 1)):
        for a, sa in enumerate(stage_counts):
            for b, sb in enumerate(stage_counts):
                if a == b:
                    continue
                for i in range(sa[k]):
                    for j in range(i, min(i + height, sb[k] - 1) + 1):
                        out.append(Connection(side, a, i, b, j))
    return out


class Projection(nn.Module):
    """1×1 convolution between channel counts plus a bilinear resize, scaled by α (init 0).

    A 1×1 convolution and a bilinear resize commute (both are linear, and the resize weights
    sum to one, so the bias passes unchanged); the convolution runs at whichever resolution
    is smaller.
    """

    def __init__(self, c_in: int, side_in: int, c_out: int, side_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1)
        self.side_in, self.side_out = side_in, side_out
        self.alpha = nn.Parameter(torch.zeros(()))

    def _resize(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] == self.side_out:
            return h
        return F.interpolate(h, size=(self.side_out, self.side_out), mode="bilinear",
                             align_corners=False, antialias=self.side_out < h.shape[-1])

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.side_out < self.side_in:
            h = self.conv(self._resize(f))
        else:
            h = self._resize(self.conv(f))
        return self.alpha * h

    def score(self) -> float:
        """|α|·‖P‖, the pruning criterion (‖P‖ = Frobenius norm of the 1×1 conv weight)."""
        return float(self.alpha.detach().abs() * self.conv.weight.detach().norm())
