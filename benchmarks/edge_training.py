"""Edge training throughput (images/s) per capability tier, on this machine's CPU, and what
training in the channels-last layout buys.

    python benchmarks/edge_training.py [--images 1024] [--batch 64] [--threads N] [--repeats 3]

Trains each tier for one warm-up pass and then timed epochs over real Fashion-MNIST images
(the paper's objective and optimiser), alternating the two layouts epoch by epoch from the same
initial weights (a shared machine's load falls on both alike): :func:`baim.models.fit` runs the
model in channels-last (:mod:`baim.models.memory_format`), the default, or in torch's default
layout. Prints images/s, parameter counts, the ratio (default-layout time over channels-last
time, median of ``--repeats``) and the relative difference of the epoch's mean training loss
from the same start: the layouts round differently, and a training amplifies rounding (Adam
normalises tiny gradients), so the two runs are equivalent, not equal; each repeats itself
exactly. The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

os.environ.setdefault("BAIM_QUIET", "1")

import torch  # noqa: E402

from baim.config import Recipe  # noqa: E402
from baim.data import load_fashion_mnist  # noqa: E402
from baim.edge import train_learner  # noqa: E402
from baim.learners import TIERS, StagedVAE, tier_spec  # noqa: E402
from baim.models import memory_format  # noqa: E402


def _epoch(model: StagedVAE, images, batch: int, channels_last: bool) -> tuple[float, float]:
    """Seconds of one epoch and its mean training loss."""
    memory_format.ENABLED = channels_last
    try:
        t0 = time.perf_counter()
        hist = train_learner(model, images, Recipe(epochs=1, batch_size=batch))
        return time.perf_counter() - t0, hist.epochs[0]["train_loss"]
    finally:
        memory_format.ENABLED = True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_fashion_mnist(args.data_dir)
    images = ds.train.load(range(args.images))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images, batch {args.batch}")
    print(f"{'tier':8} {'params':>10} {'images/s':>10} {'s/epoch':>8} {'default s':>10} {'ratio':>6} {'Δ loss':>8}")
    figures: dict[str, float] = {}
    for tier in TIERS:
        torch.manual_seed(0)
        start = StagedVAE(tier_spec(tier))
        warm = copy.deepcopy(start)
        _epoch(warm, images[: args.batch * 2], args.batch, True)
        _epoch(warm, images[: args.batch * 2], args.batch, False)
        fast, plain = [], []
        for _ in range(args.repeats):
            (tf, lf), (tp, lp) = (_epoch(copy.deepcopy(start), images, args.batch, cl) for cl in (True, False))
            fast.append(tf)
            plain.append(tp)
        diff = abs(lf - lp) / lp
        f, p = statistics.median(fast), statistics.median(plain)
        params = sum(x.numel() for x in start.parameters())
        print(f"{tier:8} {params:>10,} {args.images / f:>10.0f} {f:>8.2f} {p:>10.2f} {p / f:>6.2f} {diff:>8.1e}")
        figures[f"{tier}_images_per_s"] = round(args.images / f, 1)
        figures[f"{tier}_default_layout_over_channels_last"] = round(p / f, 3)
        figures[f"{tier}_relative_loss_difference"] = float(f"{diff:.2e}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
