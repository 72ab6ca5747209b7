"""Projection connections between learners' stages.

A connection (a, i) → (b, j) adds ``α · P(f(a, i))`` to the output of stage j of learner b,
where f(a, i) is the *raw* output of stage i of learner a. Candidates: every ordered pair of
distinct learners, encoder→encoder or decoder→decoder only (sampling runs no encoder, so
nothing may cross the latent bottleneck), with ``0 ≤ j − i ≤ h``. Because sources are raw
features and j ≥ i, the computation can proceed depth by depth, which makes the graph
acyclic by construction.

Two kinds of P: :class:`Projection`, the exact 1×1 convolution c_in → c_out per connection,
and :class:`LowRankProjection`, rank r through shared codes: each source stage is coded once
into r channels (D, c_in → r), each target stage decodes the α-weighted sum of its sources'
codes once (U, r → c_out), and a connection owns only its gate α. Its cost grows with the
number of stages, not with the number of connections (sources × targets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import cast

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

    @property
    def target(self) -> str:
        """The target stage's name: what a low-rank up-projection is stored under."""
        return f"{self.side}_{self.dst}_{self.dst_stage}"

    @property
    def source(self) -> str:
        """The source stage's name: what a low-rank code (down-projection) is stored under."""
        return f"{self.side}_{self.src}_{self.src_stage}"

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


def _resize(h: torch.Tensor, side_out: int) -> torch.Tensor:
    side = h.shape[-1]
    if side > side_out:
        return F.avg_pool2d(h, side // side_out)
    if side < side_out:
        return F.interpolate(h, scale_factor=side_out // side, mode="nearest")
    return h


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

    @property
    def bias(self) -> torch.Tensor:
        return cast(torch.Tensor, self.conv.bias)  # always present: the conv is built with a bias

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        w, b = self.conv.weight * self.alpha, self.bias * self.alpha
        if self.side_out < self.side_in:
            return F.conv2d(_resize(f, self.side_out), w, b)
        return _resize(F.conv2d(f, w, b), self.side_out)

    def score(self) -> float:
        """|α|·‖P‖, the pruning criterion (‖P‖ = Frobenius norm of the 1×1 conv weight)."""
        return float(self.alpha.detach().abs() * self.conv.weight.detach().norm())

    @staticmethod
    def summed(projections: Sequence[Projection], feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """``Σ_k projections[k](feats[k])`` for projections into one target stage, as a few wide
        convolutions instead of one small one per connection (there are hundreds at h = 3).

        The resizes commute with the 1×1 convolutions, so sources at or above the target's side
        are shrunk to it (a source may come already shrunk, as the BAIM shares that work between
        targets) and convolved together; smaller sources are convolved together per side, and
        those sums grown coarse to fine. Each weight is the concatenation of the α-scaled weights,
        rebuilt on every call, so gradients reach each connection's own α, weight and bias (which
        pruning, saving and partition address by connection name).
        """
        return _grouped_sum(projections, feats)


class LowRankProjection(nn.Module):
    """One connection of the rank-r projection: ``α · U(resize(D f + β))``, where D (1×1,
    c_in → r, bias β) belongs to the *source* stage and is shared by every connection out of
    it, U (1×1, r → c_out, no bias) belongs to the *target* stage and is shared by every
    connection into it, and only the scalar gate α is the connection's own.

    Why: each source is coded once into r channels however many targets read it, and each
    target decodes one r-channel sum; what a connection adds is one resize and scaled add of
    r channels. The cost is linear in the number of stages, not in sources × targets (hundreds
    of connections at h = 3). The resizes are linear and commute with both 1×1 maps, and α = 0
    makes the connection's share exactly zero. D and U are held by reference, not as submodules:
    the BAIM owns them (one per source and target stage, gone with the last connection that
    uses them), so they are stored and counted once.
    """

    def __init__(self, down: nn.Conv2d, side_in: int, up: nn.Conv2d, side_out: int):
        super().__init__()
        if down.out_channels != up.in_channels:
            raise ValueError(
                f"a code of {down.out_channels} channels cannot feed an up-projection from {up.in_channels}"
            )
        self.side_in, self.side_out = side_in, side_out
        self.alpha = nn.Parameter(torch.zeros(()))
        self._maps = (down, up)  # a tuple, so nn.Module does not register them (and their state) here again

    @property
    def down(self) -> nn.Conv2d:
        return self._maps[0]

    @property
    def up(self) -> nn.Conv2d:
        return self._maps[1]

    @property
    def bias(self) -> torch.Tensor:
        return cast(torch.Tensor, self.down.bias)

    def code(self, f: torch.Tensor) -> torch.Tensor:
        """The source's shared r-channel code ``D f + β`` (what :meth:`summed` reads)."""
        return F.conv2d(f, self.down.weight, self.bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """This connection alone (the grouped :meth:`summed` is what a BAIM runs)."""
        x = _resize(f, self.side_out) if self.side_out < self.side_in else f
        return _resize(F.conv2d(self.code(x) * self.alpha, self.up.weight), self.side_out)

    def matrix(self) -> torch.Tensor:
        """The c_out × c_in linear map U·D this connection applies (before α)."""
        return self.up.weight.flatten(1) @ self.down.weight.flatten(1)

    def score(self) -> float:
        """|α|·‖P‖ with ‖P‖ = ‖U·D‖_F: the same criterion as the exact projection's, on the map
        the connection actually applies."""
        return float(self.alpha.detach().abs() * self.matrix().detach().norm())

    @staticmethod
    def summed(projections: Sequence[LowRankProjection], codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """``Σ_k projections[k](f_k)`` into one target stage (one shared U) from the sources'
        codes ``D_k f_k + β_k`` (:meth:`code`, at any side, possibly shrunk already): codes
        above the target's side shrunk to it, per side the α-weighted sum of the codes, the sums
        grown coarse to fine, one up-projection at the target's side."""
        up, side_out = projections[0].up, projections[0].side_out
        if any(p.up is not up for p in projections):
            raise ValueError("low-rank projections summed together must share their target's up-projection")
        groups: dict[int, list[int]] = {}
        xs = list(codes)
        for k, c in enumerate(codes):
            if c.shape[-1] > side_out:
                xs[k] = F.avg_pool2d(c, c.shape[-1] // side_out)
            groups.setdefault(xs[k].shape[-1], []).append(k)
        alphas = torch.stack([p.alpha for p in projections])
        out: torch.Tensor | None = None
        for side in sorted(groups):
            ks = groups[side]
            y = torch.einsum("k,knrhw->nrhw", alphas[ks], torch.stack([xs[k] for k in ks]))
            out = y if out is None else F.interpolate(out, scale_factor=side // out.shape[-1], mode="nearest") + y
        if out is None:
            raise ValueError("no projections to sum")
        if out.shape[-1] < side_out:
            out = F.interpolate(out, scale_factor=side_out // out.shape[-1], mode="nearest")
        return F.conv2d(out, up.weight)


def _grouped_sum(projections: Sequence[Projection], feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_k α_k (conv_k(resize(feats[k])) + bias_k)`` at the target's side, as a few wide
    convolutions: sources at or above the target's side are shrunk to it (a source may come
    already shrunk), per side one convolution of the concatenated sources with the concatenated
    α-scaled weights, those sums grown coarse to fine. The weights are rebuilt on every call, so
    gradients reach each connection's own α, weight and bias (which pruning, saving and
    partition address by connection name)."""
    side_out, convs = projections[0].side_out, [p.conv for p in projections]
    groups: dict[int, list[int]] = {}  # side the convolution runs at -> source positions
    xs = list(feats)
    for k, f in enumerate(feats):
        if f.shape[-1] > side_out:
            xs[k] = F.avg_pool2d(f, f.shape[-1] // side_out)
        groups.setdefault(xs[k].shape[-1], []).append(k)
    alphas = torch.stack([p.alpha for p in projections])
    bias = alphas @ torch.stack([p.bias for p in projections])  # a constant survives nearest growth
    out: torch.Tensor | None = None
    for side in sorted(groups):
        ks = groups[side]
        widths = [convs[k].in_channels for k in ks]
        scale = alphas[ks].repeat_interleave(torch.tensor(widths, device=alphas.device), output_size=sum(widths))
        w = torch.cat([convs[k].weight for k in ks], 1) * scale.view(1, -1, 1, 1)
        x = torch.cat([xs[k] for k in ks], 1) if len(ks) > 1 else xs[ks[0]]
        y = F.conv2d(x, w, bias if out is None else None)
        out = y if out is None else F.interpolate(out, scale_factor=side // out.shape[-1], mode="nearest") + y
    if out is None:
        raise ValueError("no projections to sum")
    if out.shape[-1] < side_out:
        out = F.interpolate(out, scale_factor=side_out // out.shape[-1], mode="nearest")
    return out
