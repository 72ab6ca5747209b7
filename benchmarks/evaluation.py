"""What an edge model's evaluation costs, and what the study's speed-ups buy.

    python benchmarks/evaluation.py [--repeats 3] [--tiers small,medium,large]

The workflow's evaluation of one edge learner at the ``quick`` preset's sizes (test loss and
MSE on the task's 1,000 test images, the IWAE bound with k = 64 on 64 of them, the same on the
edge's own test set, FID/KID of 500 samples by three procedures): wall seconds per call as
it runs (channels-last layout, :mod:`baim.models.memory_format`, normalisation folded into the
convolutions, :mod:`baim.models.folding`), without the folding, in torch's default layout, and
inside the comparison's FLOP counter (what every per-round score and the workflow's
evaluations paid before :meth:`Meter.paused`). Also checks that every way gives the same
numbers. One torch thread, as in a study worker. The last line is
one JSON object of the figures (ratios: timings on a shared machine are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

os.environ.setdefault("BAIM_QUIET", "1")

import torch  # noqa: E402

from baim.compare.common import build  # noqa: E402
from baim.compare.measure import flop_counter  # noqa: E402
from baim.compare.runner import make_context  # noqa: E402
from baim.config import RunConfig  # noqa: E402
from baim.models import folding, memory_format  # noqa: E402


def _timed(fn, repeats: int) -> tuple[float, dict]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _without(module, fn):
    """``fn()`` with ``module``'s speed-up switched off (``module.ENABLED``)."""
    real = module.ENABLED
    module.ENABLED = False
    try:
        return fn()
    finally:
        module.ENABLED = real


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiers", default="small,medium,large")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    figures: dict[str, float] = {}
    keys = ("nll_bpd", "test_loss", "mse", "own_nll_bpd", "fid_fitted")
    with TemporaryDirectory() as tmp:
        ctx = make_context(Path(tmp), RunConfig(preset="quick", seed=0, data_dir=args.data_dir))
        print(f"torch {torch.__version__}, 1 thread; quick preset seed 0, edge 0's sets; median of {args.repeats}")
        print(
            f"{'tier':8} {'default s':>10} {'unfolded s':>11} {'ratio':>6} {'plain layout s':>15} {'ratio':>6} "
            f"{'in counter s':>13} {'ratio':>6}"
        )
        for tier in args.tiers.split(","):
            model = build(tier, ctx.ds, 0).eval()
            run = lambda m=model: ctx.evaluate_edge(0, m)  # noqa: E731
            fast_s, fast = _timed(run, args.repeats)
            unfolded_s, unfolded = _without(folding, lambda: _timed(run, args.repeats))
            plain_s, plain = _without(memory_format, lambda: _timed(run, args.repeats))

            def counted(m=model):
                with flop_counter():
                    return ctx.evaluate_edge(0, m)

            counted_s, _ = _timed(counted, args.repeats)
            worst = max(abs(fast[k] - x[k]) / max(abs(x[k]), 1e-12) for x in (plain, unfolded) for k in keys)
            print(
                f"{tier:8} {fast_s:>10.2f} {unfolded_s:>11.2f} {unfolded_s / fast_s:>6.2f} {plain_s:>15.2f} "
                f"{plain_s / fast_s:>6.2f} {counted_s:>13.2f} {counted_s / fast_s:>6.2f}   "
                f"largest relative difference {worst:.1e}"
            )
            figures[f"{tier}_evaluate_s"] = round(fast_s, 3)
            figures[f"{tier}_unfolded_over_folded"] = round(unfolded_s / fast_s, 3)
            figures[f"{tier}_default_layout_over_channels_last"] = round(plain_s / fast_s, 3)
            figures[f"{tier}_in_flop_counter_over_paused"] = round(counted_s / fast_s, 3)
            figures[f"{tier}_largest_relative_difference"] = float(f"{worst:.2e}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
