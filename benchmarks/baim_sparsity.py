"""Does the BAIM's decoder cost grow with N? (sparse execution)

    python benchmarks/baim_sparsity.py [--batch 128] [--repeats 5]

For N = 4, 8, 16, 32 learners in one squad at K = 2, times decoder forward+backward of the
BAIM and divides it by the time of the K selected learners decoding the same z alone, both
measured in the same run (ratios, since CPU timings are noisy). The gate is fixed to pick
learners 0 and 1, so the ratio isolates the cost of having N learners around.

Rows:
- ``none``: no connections. Target: ratio < 1.5, and ratio(N=32) within 1.3× of ratio(N=4).
- ``fixed``: each selected learner reads 4 connections from learners 2 and 3 (a pruned
  BAIM's connections in use, the same for every N). Target: ratio(N=32) ≤ 1.3 × ratio(N=4).
- ``all``: every candidate connection at h = 3 kept (an unpruned BAIM): the closure then
  holds every decoder, so this cost grows with N by design; shown for honesty.
- ``spread``: no connections, but the gate spreads samples over all N learners (each
  learner gets 2·B/N samples): same compute, more, smaller dispatches.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from baim.learners import StagedVAE, tier_spec
from baim.models import BAIM, Connection, candidate_connections

TIERS = ("small", "medium", "large")


def build(n: int, mode: str) -> BAIM:
    torch.manual_seed(0)
    learners = [StagedVAE(tier_spec(TIERS[i % 3])) for i in range(n)]
    if mode == "all":
        conns = candidate_connections([(l.spec.num_stages,) * 2 for l in learners], 3)
    elif mode == "fixed":
        conns = [Connection("dec", a, i, b, i + 1) for b in (0, 1) for a in (2, 3) for i in (0, 1)]
    else:
        conns = []
    model = BAIM.from_learners(learners, [0] * n, ["t"], conns, top_k=2)
    with torch.no_grad():
        for p in model.connections.values():
            p.alpha.fill_(0.1)
        g = model.lsgates[0]
        g.net[2].weight.zero_()
        if mode == "spread":
            g.net[2].weight.normal_(0, 1.0)  # z-dependent choice: samples spread over all learners
        else:
            g.net[2].bias.copy_(torch.tensor([5.0, 4.0] + [0.0] * (n - 2)))
    return model


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", default="4,8,16,32")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, K = 2")
    print(f"{'mode':7} {'N':>3} {'conns':>6} {'BAIM ms':>9} {'K alone ms':>10} {'ratio':>6}")
    ratios: dict[str, dict[int, float]] = {}
    for mode in ("none", "fixed", "spread", "all"):
        for n in sizes:
            model = build(n, mode)
            model.train()
            z = torch.randn(args.batch, model.latent_dim)
            tasks = torch.zeros(args.batch, dtype=torch.long)

            def baim_step() -> None:
                model.zero_grad(set_to_none=True)
                x_hat, _ = model.decode(z, tasks)
                x_hat.mean().backward()

            with torch.no_grad():
                r = model.lsgates[0](z, 2, noisy=False)
            picks = [(l, (r.indices == l).any(1)) for l in range(n)]
            picks = [(l, m) for l, m in picks if m.any()]

            def alone_step() -> None:
                model.zero_grad(set_to_none=True)
                out = 0
                for l, m in picks:
                    lrn = model.learners[l]
                    out = out + lrn.decode(model.adapters[l](z[m])).sum()
                (out / z.numel()).backward()

            tb, ta = time_it(baim_step, args.repeats), time_it(alone_step, args.repeats)
            ratios.setdefault(mode, {})[n] = tb / ta
            print(f"{mode:7} {n:>3} {len(model.connections):>6} {tb * 1e3:>9.1f} {ta * 1e3:>10.1f} {tb / ta:>6.2f}")
    for mode in ("none", "fixed", "spread"):
        r = ratios[mode]
        print(
            f"{mode}: ratio(N={sizes[-1]}) / ratio(N={sizes[0]}) = {r[sizes[-1]] / r[sizes[0]]:.2f} "
            f"(target ≤ 1.3){'' if mode != 'none' else f'; max ratio {max(r.values()):.2f} (target < 1.5)'}"
        )


if __name__ == "__main__":
    main()
