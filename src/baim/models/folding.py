"""Batch normalisation folded into the convolution before it, for scoring only.

Why: a model in eval mode normalises with fixed statistics, so ``BN(conv(x))`` is one affine
map per channel after the convolution, which the convolution's own weights and bias can hold:
``W' = W·γ/√(σ²+ε)``, ``b' = (b − μ)·γ/√(σ²+ε) + β``. Scoring a model (the IWAE bound's 4,096
decodes, FID's samples, the validation loss after every epoch) then skips one pass over every
feature map per stage, and the activation after it runs in place; an edge model's evaluation
takes about 1.3× less time (``benchmarks/evaluation.py``). The numbers agree with the unfolded
model to float rounding (1e-11 relative on the quick preset's scores).

Only for the duration of :func:`folded_norms`, and only in eval mode: the original weight and
bias tensors are put back afterwards (the same objects, so an optimiser holding the parameters
is untouched), and so are the normalisation modules. A BAIM runs its learners' stages whole,
so folding inside a stage leaves what it reads between stages unchanged.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

_FOLDED: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # models inside folded_norms()
ENABLED = True  # off only to measure what folding buys (benchmarks)


@contextmanager
def folded_norms(model: nn.Module) -> Iterator[None]:
    """Every ``Sequential(conv, BatchNorm2d[, LeakyReLU])`` of ``model`` whose normalisation is
    in eval mode runs as one convolution (then an in-place activation) for the duration.
    Re-entrant: an inner call inside an outer one does nothing."""
    if model in _FOLDED or not ENABLED:
        yield
        return
    undo: list[tuple[nn.Sequential, nn.Module, torch.Tensor, torch.Tensor, nn.BatchNorm2d]] = []
    _FOLDED.add(model)
    try:
        with torch.no_grad():
            for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
                if len(seq) < 2 or not isinstance(seq[1], nn.BatchNorm2d) or seq[1].training:
                    continue
                conv, bn = seq[0], seq[1]
                if not isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) or conv.bias is None:
                    continue
                if bn.running_mean is None or bn.running_var is None or not bn.affine:
                    continue
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                w, b = conv.weight.data, conv.bias.data
                shape = [1] * w.dim()
                shape[1 if isinstance(conv, nn.ConvTranspose2d) else 0] = -1  # the output channels
                conv.weight.data = w * scale.reshape(shape)
                conv.bias.data = (b - bn.running_mean) * scale + bn.bias
                seq[1] = nn.Identity()
                undo.append((seq, conv, w, b, bn))
                if len(seq) > 2 and isinstance(seq[2], nn.LeakyReLU):
                    seq[2].inplace = True
        yield
    finally:
        for seq, conv, w, b, bn in reversed(undo):
            conv.weight.data, conv.bias.data = w, b
            seq[1] = bn
            if len(seq) > 2 and isinstance(seq[2], nn.LeakyReLU):
                seq[2].inplace = False
        _FOLDED.discard(model)
