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
    """1×1 convolution between channel counts plus a resize, scaled by α (initialised to 0).

    Stage sides are powers of two, so the resize is exact area averaging when shrinking
    and nearest-neighbour repetition when growing: both linear with weights summing to one,
    so they commute with the 1×1 convolution (bias included), and the convolution runs at
    whichever resolution is smaller. α scales the convolution's weight and bias rather than
    its output, which is the same function at a fraction of the cost.
    """

    def __init__(self, c_in: int, side_in: int, c_out: int, side_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1)
        self.side_in, self.side_out = side_in, side_out
        self.alpha = nn.Parameter(torch.zeros(()))

    def _resize(self, h: torch.Tensor) -> torch.Tensor:
        side = h.shape[-1]
        if side > self.side_out:
            return F.avg_pool2d(h, side // self.side_out)
        if side < self.side_out:
            return F.interpolate(h, scale_factor=self.side_out // side, mode="nearest")
        return h

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        w, b = self.conv.weight * self.alpha, self.conv.bias * self.alpha
        if self.side_out < self.side_in:
            return F.conv2d(self._resize(f), w, b)
        return self._resize(F.conv2d(f, w, b))

    def score(self) -> float:
        """|α|·‖P‖, the pruning criterion (‖P‖ = Frobenius norm of the 1×1 conv weight)."""
        return float(self.alpha.detach().abs() * self.conv.weight.detach().norm())
