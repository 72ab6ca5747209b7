"""One method's row of ``baim compare``: the same KPI columns for every method, built once.

Why a type: every method used to spell the same ~20 keys by hand, and a key one method forgot
or misspelt only showed up in the report. :func:`method_row` takes what a method measured (its
messages, its meter, storage, latency, the per-edge evaluations) and derives the columns the
same way for all; :meth:`MethodRow.to_dict` is what ``methods/METHOD.json`` holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .common import FID_SAMPLING, quality
from .measure import Meter, ledger_totals


@dataclass(frozen=True)
class Compute:
    """CPU seconds and FLOPs per side (evaluation excluded), and, where metered here, the
    per-phase breakdown."""

    edge_cpu_s: float
    cloud_cpu_s: float
    edge_flops: int
    cloud_flops: int
    meter: dict[str, Any] | None = None

    @classmethod
    def of(cls, meter: Meter) -> Compute:
        """Every side's totals of ``meter`` (measurement is never inside a side)."""
        ecpu, eflops = meter.totals("edge")
        ccpu, cflops = meter.totals("cloud")
        return cls(ecpu, ccpu, eflops, cflops, meter.to_dict())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "edge_cpu_s": round(self.edge_cpu_s, 3),
            "cloud_cpu_s": round(self.cloud_cpu_s, 3),
            "edge_flops": int(self.edge_flops),
            "cloud_flops": int(self.cloud_flops),
        }
        return out | ({"meter": self.meter} if self.meter is not None else {})


@dataclass(frozen=True)
class MethodRow:
    """What one method costs and how good its edges' models are (see ``compare.json``'s
    ``definitions`` for every column's meaning)."""

    method: str
    description: str
    settings: dict[str, Any]
    bytes_up: int
    bytes_down: int
    messages: int
    bytes_per_edge: dict[str, dict[str, int]]
    raw_data_bytes: int
    compute: Compute
    edge_storage_bytes: int
    cloud_storage_bytes: int
    latency_ms: float
    round_trips: int
    wall_s: float
    per_edge: list[dict]
    extra: dict[str, Any] = field(default_factory=dict)  # a method's own columns (rounds, notes)

    @property
    def quality(self) -> dict[str, float]:
        return quality(self.per_edge)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "description": self.description,
            "settings": self.settings,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "messages": self.messages,
            "bytes_per_edge": self.bytes_per_edge,
            "raw_data_bytes": self.raw_data_bytes,
            **self.compute.to_dict(),
            "edge_storage_bytes": self.edge_storage_bytes,
            "cloud_storage_bytes": self.cloud_storage_bytes,
            "latency_ms": self.latency_ms,
            "round_trips": self.round_trips,
            "wall_s": round(self.wall_s, 2),
            **self.quality,
            "fid_sampling": FID_SAMPLING,
            "per_edge": self.per_edge,
            **self.extra,
        }


def method_row(
    method: str,
    description: str,
    settings: dict[str, Any],
    *,
    messages: list[dict],
    raw_data_bytes: int,
    compute: Meter | Compute,
    storage: tuple[int, int],
    latency_ms: float | list[float],
    round_trips: int,
    wall_s: float,
    per_edge: list[dict],
    **extra: Any,
) -> MethodRow:
    """The row of a method that sent ``messages`` (ledger entries; evaluation and inference
    traffic left out of the bytes), of which ``raw_data_bytes`` were edges' training images,
    did the work ``compute`` measured (a :class:`Meter` or its totals), keeps ``storage``
    (edge bytes, cloud bytes), generates in ``latency_ms`` (one value, or one per edge:
    averaged) with ``round_trips`` to the network, took ``wall_s`` to deployed models, and
    scored ``per_edge`` (the workflow's evaluation of each edge's model). ``extra``: the
    method's own columns, after the common ones (they may refine ``fid_sampling``)."""
    b = ledger_totals(messages)
    latency = float(np.mean(latency_ms)) if isinstance(latency_ms, list) else float(latency_ms)
    return MethodRow(
        method=method,
        description=description,
        settings=settings,
        bytes_up=b["up"],
        bytes_down=b["down"],
        messages=b["messages"],
        bytes_per_edge=b["per_edge"],
        raw_data_bytes=raw_data_bytes,
        compute=compute if isinstance(compute, Compute) else Compute.of(compute),
        edge_storage_bytes=storage[0],
        cloud_storage_bytes=storage[1],
        latency_ms=round(latency, 3),
        round_trips=round_trips,
        wall_s=wall_s,
        per_edge=per_edge,
        extra=extra,
    )
