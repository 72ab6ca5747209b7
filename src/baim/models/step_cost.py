"""Count a fixed-cost training step's FLOPs once per batch shape, not at every step.

Why: the comparison books every method's edge and cloud FLOPs with ``torch``'s FLOP counter,
a dispatch mode that intercepts every operation in Python. Inside it a learner's epoch runs
about 1.2× slower (``benchmarks/flop_counter.py``), and the study trains hundreds of thousands
of steps inside it. Yet for a model whose architecture does not change during a fit (no
routing, no pruning), the matrix work of a step depends only on the shapes of its batch: the
same shapes, the same FLOPs. So :func:`baim.models.fit` with ``fixed_cost=True`` counts the
first step of each batch shape (its forward apart from its backward and optimiser update,
since a step whose loss is not finite has neither) and, for every later step of that shape,
runs it outside the counter and books the first one's count. The update counts no FLOPs
(elementwise), but inside the counter every one of its operations is intercepted too. The
totals are the same integers (a test checks that); only the time to get them changes.

The counter belongs to the caller (``baim.compare.measure.Meter``, a layer above this one), so
it is reached through :func:`counting_with`: a counter that is not registered, or that is
paused, makes every region here a no-op, and nothing is cached from it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class StepCounter(Protocol):
    """What a region needs from the FLOP counter that is running."""

    @property
    def active(self) -> bool:
        """Counting now (not paused, inside its counting window)."""

    @property
    def boundaries(self) -> int:
        """How many times the work's attribution changed (a side opened or closed): a region
        across which it changed is not cached, since its FLOPs went to two owners."""

    def total(self) -> int:
        """FLOPs counted so far."""

    def paused(self) -> AbstractContextManager[None]:
        """A context in which nothing is counted."""

    def book(self, flops: int) -> None:
        """Add FLOPs counted elsewhere to the current owner."""


_counters: list[StepCounter] = []


@contextmanager
def counting_with(counter: StepCounter) -> Iterator[None]:
    """Make ``counter`` the one fixed-cost regions report to, for the duration."""
    _counters.append(counter)
    try:
        yield
    finally:
        _counters.remove(counter)


@contextmanager
def uncounted() -> Iterator[None]:
    """Nothing in the region is counted: measurement inside a training (a per-epoch test
    curve), which is no side's work, and which the counter would slow by intercepting every
    operation. A no-op when no counter is registered."""
    if not _counters:
        yield
        return
    with _counters[-1].paused():
        yield


class StepCosts:
    """The FLOPs of each region key seen so far in one fit (a key: what the region is, and the
    shapes of its inputs)."""

    def __init__(self) -> None:
        self.flops: dict[Hashable, int] = {}

    @contextmanager
    def region(self, key: Hashable) -> Iterator[None]:
        counter = _counters[-1] if _counters else None
        if counter is None or not counter.active:
            yield
            return
        if key in self.flops:
            with counter.paused():
                yield
            counter.book(self.flops[key])
            return
        before, marks = counter.total(), counter.boundaries
        yield
        if counter.active and counter.boundaries == marks:
            self.flops[key] = counter.total() - before
