"""Edge training throughput (images/s) per capability tier, on this machine's CPU.

    python benchmarks/edge_training.py [--images 1024] [--batch 64] [--threads N]

Trains each tier for one warm-up pass and then one timed epoch over real Fashion-MNIST
images (the paper's objective and optimiser), and prints images/s and parameter counts.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("BAIM_QUIET", "1")

import torch  # noqa: E402

from baim.config import Recipe  # noqa: E402
from baim.data import load_fashion_mnist  # noqa: E402
from baim.edge import train_learner  # noqa: E402
from baim.learners import TIERS, StagedVAE, tier_spec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_fashion_mnist(args.data_dir)
    images = ds.train.load(range(args.images))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images, batch {args.batch}")
    print(f"{'tier':8} {'params':>10} {'images/s':>10} {'s/epoch':>8}")
    for tier in TIERS:
        torch.manual_seed(0)
        model = StagedVAE(tier_spec(tier))
        train_learner(model, images[: args.batch * 2], Recipe(epochs=1, batch_size=args.batch))
        t0 = time.perf_counter()
        hist = train_learner(model, images, Recipe(epochs=1, batch_size=args.batch))
        dt = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        print(f"{tier:8} {params:>10,} {hist.images_per_second:>10.0f} {dt:>8.2f}")


if __name__ == "__main__":
    main()
