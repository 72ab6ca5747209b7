"""What every method of ``baim compare`` is measured with.

- :class:`Meter`: CPU seconds (``time.process_time``, every thread of this process) and FLOPs
  (``torch.utils.flop_counter``: matrix multiplications and convolutions, forward and backward)
  attributed to the side doing the work, ``edge`` or ``cloud``. One FLOP counter is active for a
  whole method; a side's share is the difference of the counter's total at its boundaries, so
  nested sides never count an operation twice (an inner side pauses the outer one).
- :class:`Wire`: every message a method sends goes through baim's codec and a
  :class:`~baim.transport.ByteLedger`, exactly as the workflow's do, so bytes are the encoded
  sizes and comparable with a run's ``summary["bytes"]``. Raw training images that leave an edge
  are counted apart (``raw_data_bytes``).
- :func:`latency_ms`: median wall time of a 16-image generation.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..learners import weights_bytes
from ..models.step_cost import counting_with
from ..transport import ByteLedger, Message, decode, encode

SIDES = ("edge", "cloud")


class _GlobalOnly:
    """What ``FlopCounterMode`` asks its module tracker for, when only the total is wanted: the
    one ``Global`` bucket, no hooks. Why: the stock tracker registers a backward hook on the
    inputs and outputs of every module call and keeps every handle until the counter exits, so
    over a method that trains inside one counter (minutes, thousands of steps) memory grows
    with every step; split learning at ``converged`` reached 21 GB and was killed. Totals are
    counted by the dispatch mode, not the tracker, so they are unchanged."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *args: object) -> None:
        return None


def flop_counter() -> FlopCounterMode:
    """A FLOP counter that keeps only the total (see :class:`_GlobalOnly`)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()  # type: ignore[assignment]
    return counter


class Meter:
    """CPU seconds and FLOPs per side (and per phase inside a side)."""

    def __init__(self) -> None:
        self.cpu: dict[tuple[str, str], float] = defaultdict(float)
        self.flops: dict[tuple[str, str], int] = defaultdict(int)
        self._counter: FlopCounterMode | None = None
        self._stack: list[tuple[str, str, float, int]] = []
        self._counted = 0  # FLOPs counted before the last pause (re-entering the counter clears it)
        self._paused = False
        self.boundaries = 0  # sides opened and closed: a step across one is not a fixed cost

    @property
    def active(self) -> bool:
        return self._counter is not None and not self._paused

    @contextmanager
    def counting(self) -> Iterator[Meter]:
        """Count FLOPs for the duration (sides record nothing outside it but CPU time)."""
        self._counter, self._counted = flop_counter(), 0
        with self._counter, counting_with(self):
            yield self
        self._counter = None

    def total(self) -> int:
        """FLOPs counted so far (a fixed-cost step's region, :mod:`baim.models.step_cost`)."""
        return self._total_flops()

    def book(self, flops: int) -> None:
        """Count ``flops`` done while paused (a fixed-cost step counted once before)."""
        self._counted += flops

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No FLOP counting for the duration: for measurement inside a method (its per-round
        scores, the workflow's evaluations), whose FLOPs no side is booked anyway. Why: the
        counter intercepts every operation in Python, which makes an evaluation 15–25 % slower
        on a CPU; a side open across the pause records none of the paused work's FLOPs (its
        CPU seconds it still records)."""
        if self._counter is None or self._paused:
            yield
            return
        self._counted += int(self._counter.get_total_flops())
        self._counter.__exit__(None, None, None)
        self._paused = True
        try:
            yield
        finally:
            self._paused = False
            self._counter.__enter__()

    def _total_flops(self) -> int:
        if self._counter is None:
            return 0
        return self._counted + (0 if self._paused else int(self._counter.get_total_flops()))

    def _close_top(self) -> None:
        side, phase, cpu0, flops0 = self._stack[-1]
        self.cpu[(side, phase)] += time.process_time() - cpu0
        self.flops[(side, phase)] += self._total_flops() - flops0

    @contextmanager
    def side(self, side: str, phase: str = "training") -> Iterator[None]:
        assert side in SIDES
        self.boundaries += 1
        if self._stack:  # pause the enclosing side
            self._close_top()
        self._stack.append((side, phase, time.process_time(), self._total_flops()))
        try:
            yield
        finally:
            self._close_top()
            self._stack.pop()
            self.boundaries += 1
            if self._stack:  # resume the enclosing side from now
                s, p, _, _ = self._stack[-1]
                self._stack[-1] = (s, p, time.process_time(), self._total_flops())

    def edge(self, phase: str = "training") -> Any:
        return self.side("edge", phase)

    def cloud(self, phase: str = "training") -> Any:
        return self.side("cloud", phase)

    def totals(self, side: str, phases: tuple[str, ...] | None = None) -> tuple[float, int]:
        keys = [k for k in self.cpu if k[0] == side and (phases is None or k[1] in phases)]
        return sum(self.cpu[k] for k in keys), sum(self.flops[k] for k in keys)

    def to_dict(self) -> dict[str, Any]:
        return {
            f"{s}/{p}": {"cpu_s": round(self.cpu[(s, p)], 3), "flops": self.flops[(s, p)]}
            for (s, p) in sorted(self.cpu)
        }


class Wire:
    """Messages between the cloud and edges, through the codec and a byte ledger.

    ``send`` encodes the message, records its size, and returns what the receiver decodes: the
    receiver only ever works on decoded bytes. With ``keep`` every message is also kept (the
    tests re-encode them to check the ledger)."""

    def __init__(self, ledger: ByteLedger | None = None, keep: bool = False):
        self.ledger = ledger or ByteLedger()
        self.keep = keep
        self.kept: list[tuple[str, int, str, Message]] = []
        self.raw_data_bytes = 0

    def send(self, edge: int, direction: str, msg: Message, phase: str = "training", raw_data: int = 0) -> Message:
        """``direction`` is ``up`` (edge → cloud) or ``down``; ``raw_data`` is how many bytes of
        the edge's raw training data the message carries."""
        assert direction in ("up", "down")
        data = encode(msg)
        self.ledger.record(phase, direction, edge, msg.kind, len(data))
        if self.keep:
            self.kept.append((direction, edge, phase, msg))
        self.raw_data_bytes += raw_data
        return decode(data)

    def up(self, edge: int, msg: Message, phase: str = "training", raw_data: int = 0) -> Message:
        return self.send(edge, "up", msg, phase, raw_data)

    def down(self, edge: int, msg: Message, phase: str = "training") -> Message:
        return self.send(edge, "down", msg, phase)


def ledger_totals(messages: list[dict], exclude: tuple[str, ...] = ("evaluation", "inference")) -> dict[str, Any]:
    """Bytes up/down over all edges and per edge, leaving out measurement traffic."""
    rows = [m for m in messages if m["phase"] not in exclude]
    per_edge: dict[int, dict[str, int]] = defaultdict(lambda: {"up": 0, "down": 0})
    for m in rows:
        per_edge[int(m["edge"])][m["direction"]] += int(m["bytes"])
    return {
        "up": sum(v["up"] for v in per_edge.values()),
        "down": sum(v["down"] for v in per_edge.values()),
        "messages": len(rows),
        "per_edge": {str(e): v for e, v in sorted(per_edge.items())},
    }


def model_bytes(module: torch.nn.Module) -> int:
    """Bytes of a model as stored and sent (its safetensors state dict)."""
    return len(weights_bytes(module))


def latency_ms(fn: Callable[[], Any], repeats: int = 7) -> float:
    """Median wall milliseconds of ``repeats`` calls of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 3)
