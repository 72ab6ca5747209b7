"""The channels-last layout that every model of baim runs in while it trains or is scored.

Why: on a CPU, oneDNN's native layout for convolutions is channels-last. With the weights in
it, the decoders' transposed convolutions run about 1.8× faster in inference (an edge model's
evaluation 1.25–1.4×, ``benchmarks/evaluation.py``), and a learner's training epoch 1.27–1.32×
(``benchmarks/edge_training.py``, one thread). Only the layout changes: a forward pass agrees
with torch's default layout to float rounding. A training rounds differently, though, and
amplifies it (Adam normalises tiny gradients), so a run trained in this layout is equivalent
to, not equal to, the same run in the default layout or one made before 2026-12-07 (its
epoch losses within 0.05 %); it repeats itself exactly.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_CHANNELS_LAST: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()  # models inside channels_last()
ENABLED = True  # off only to measure what the layout buys (benchmarks)


@contextmanager
def channels_last(model: torch.nn.Module) -> Iterator[None]:
    """``model``'s convolution weights in the channels-last layout for the duration, then back.

    The parameters stay the same objects (an optimiser holding them keeps working; its state,
    created inside, follows the layout and stays valid outside), and the default layout is
    restored afterwards, so saving, averaging and sending weights see the model as before.
    Re-entrant: an inner call inside an outer one does nothing."""
    if model in _CHANNELS_LAST or not ENABLED:
        yield
        return
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # accepted, not in the stubs
    _CHANNELS_LAST.add(model)
    try:
        yield
    finally:
        _CHANNELS_LAST.discard(model)
        model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
