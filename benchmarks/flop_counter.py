"""What counting FLOPs costs the training it counts.

    python benchmarks/flop_counter.py [--images 640]

``baim compare`` and ``baim study`` count every method's FLOPs with torch's FLOP counter
(:func:`baim.compare.measure.flop_counter`), a dispatch mode that intercepts every operation in
Python. This times one epoch of training with and without it, on one torch thread as in a
study worker: a large edge learner (the edges' recipe, batch 64) and a BAIM of the quick
preset's six learners (three tasks, top-2, every candidate connection at height 1). Each is
timed plain, inside the bare counter (every step intercepted) and inside a
:class:`~baim.compare.measure.Meter`, where a learner's fit counts one step per batch shape
and books it for the rest (:mod:`baim.models.step_cost`; a BAIM routes, so it is counted at
every step either way); both counts must agree. The last line is one JSON object of the
figures (ratios: timings on a shared machine are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("BAIM_QUIET", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from baim.compare.measure import Meter, flop_counter  # noqa: E402
from baim.config import Recipe  # noqa: E402
from baim.data import load_fashion_mnist  # noqa: E402
from baim.edge import train_learner  # noqa: E402
from baim.learners import StagedVAE, tier_spec  # noqa: E402
from baim.models import BAIM, candidate_connections, train_baim  # noqa: E402

QUICK_TIERS = ["small", "medium", "large", "medium", "large", "large"]


def _three(train) -> tuple[float, float, float, bool]:
    """Seconds plain, inside the bare counter, inside a meter; whether both counts agree."""
    train()  # warm-up
    t = time.perf_counter()
    train()
    plain = time.perf_counter() - t
    with flop_counter() as bare:
        t = time.perf_counter()
        train()
        counted = time.perf_counter() - t
    meter = Meter()
    with meter.counting(), meter.edge():
        t = time.perf_counter()
        train()
        metered = time.perf_counter() - t
    return plain, counted, metered, meter.totals("edge")[1] == bare.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=640)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = load_fashion_mnist(args.data_dir)
    x = ds.train.load(range(args.images))
    tasks = np.arange(args.images) % 3
    recipe = Recipe(epochs=1, batch_size=64)
    torch.manual_seed(0)
    learner = StagedVAE(tier_spec("large"))
    learners = [StagedVAE(tier_spec(t)) for t in QUICK_TIERS]
    stages = [(len(m.encoder_shapes()), len(m.decoder_shapes())) for m in learners]
    conns = candidate_connections(stages, 1)
    baim = BAIM.from_learners(learners, [0, 1, 2, 0, 1, 2], ["a", "b", "c"], connections=conns, top_k=2)
    figures = {}
    print(f"torch {torch.__version__}, 1 thread, {args.images} images, one epoch each")
    for name, train in (
        ("large_learner", lambda: train_learner(learner, x, recipe)),
        ("baim", lambda: train_baim(baim, x, tasks, recipe)),
    ):
        plain, counted, metered, same = _three(train)
        print(
            f"{name:14} plain {plain:6.2f} s   every step counted {counted:6.2f} s ×{counted / plain:.2f}   "
            f"metered {metered:6.2f} s ×{metered / plain:.2f}"
            + (f"   same FLOPs: {same}" if name == "large_learner" else "")  # a BAIM's routing moves
        )
        figures[f"{name}_counted_over_plain"] = round(counted / plain, 3)
        figures[f"{name}_metered_over_plain"] = round(metered / plain, 3)
        if name == "large_learner":
            figures["learner_same_flops"] = same
    figures["baim_connections"] = len(conns)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
