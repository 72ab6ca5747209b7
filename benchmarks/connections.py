"""How much slower does a BAIM train with every candidate connection at h = 3?

    python benchmarks/connections.py [--learners 9] [--tasks 3] [--batch 64] [--repeats 4] [--threads 1]

Builds a BAIM of small/medium/large learners (tiers cycled within each task, as the layout
does) with every candidate connection at h = 3 and α = 0.1, and the same BAIM without
connections, and times one training step (forward, pixel-mean MSE + β·KL, backward, Adam
step) per image. Rows:

- ``none``: no connections.
- ``h=3``: all candidates, as the library runs them (the projections into one target stage
  as a few wide convolutions, :meth:`Projection.summed`).
- ``h=3 ungrouped``: the same, but one convolution per connection (each :class:`Projection`
  called on its own; the sources' shrinking and row gathering stay shared, so this row
  isolates the grouping of the convolutions).
- ``h=3 closure``: every projection's value times 0: the cost of the stages the connections
  force to run (all stages of all learners, on both passes) without the projections, roughly
  the floor for any way of running them.

No way of running the same arithmetic brings h = 3 near the cost of no connections: every
stage of every learner runs, and the projections' multiply-adds exceed all of theirs (1.7×
at 6 learners, 2.8× at 9, growing with the count; printed).

The gate is fixed (noise off, a random z-dependent choice that spreads samples over each
squad), and so is the reparameterisation noise, so that every step dispatches the same
sample sets. The last line is one JSON object; ``ratio`` = per-image time at h = 3 / without
connections.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F

from baim.learners import StagedVAE, tier_spec
from baim.models import BAIM, Projection, candidate_connections

TIERS = ("small", "medium", "large")


class Ungrouped(BAIM):
    """One convolution per connection, summed (how projections ran before grouping)."""

    def _project(self, names: list[str], feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.connections[n](f) for n, f in zip(names, feats)]).sum(0)


class ClosureOnly(BAIM):
    """The projections' values times 0, so gradients still flow through every source stage."""

    def _project(self, names: list[str], feats: list[torch.Tensor]) -> torch.Tensor:
        return 0 * torch.stack([f.sum() for f in {id(f): f for f in feats}.values()]).sum()


def macs_per_image(model: BAIM) -> tuple[float, float]:
    """(multiply-adds of every stage of every learner, of every projection) for one image run
    through all of them: what all connections cost before any sparsity."""
    stages = 0
    for l in range(len(model.learners)):
        spec = model.learner(l).spec
        w = list(spec.stage_widths)
        for cin, (cout, side) in zip([spec.channels] + w[:-1], model.learner(l).encoder_shapes()):
            stages += 9 * cin * cout * side * side
        for cin, (cout, side) in zip(w[::-1], model.learner(l).decoder_shapes()):
            stages += 9 * cin * cout * (side // 2) ** 2  # transposed: one 3×3 product per input pixel
    projs = [cast(Projection, p) for p in model.connections.values()]
    proj = sum(p.conv.in_channels * p.conv.out_channels * min(p.side_in, p.side_out) ** 2 for p in projs)
    return stages, proj


def build(n: int, tasks: int, height: int | None, cls: type[BAIM] = BAIM) -> BAIM:
    torch.manual_seed(0)
    learner_tasks: list[int | None] = [l % tasks for l in range(n)]
    learners = [StagedVAE(tier_spec(TIERS[(l // tasks + l % tasks) % 3])) for l in range(n)]
    counts = [(lrn.spec.num_stages,) * 2 for lrn in learners]
    conns = candidate_connections(counts, height) if height is not None else []
    model = cls.from_learners(learners, learner_tasks, [f"t{t}" for t in range(tasks)], conns, top_k=2)
    with torch.no_grad():
        for p in model.connections.values():
            cast(Projection, p).alpha.fill_(0.1)
        for t in range(tasks):
            g = model.lsgate(t)
            g.out_layer.weight.normal_(0, 1.0)
            g.noise.bias.fill_(-30.0)  # softplus(-30) ≈ 1e-13: no gate noise
    return model.train()


def train_step(model: BAIM, batch: int, tasks: int) -> Callable[[], None]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 1, 32, 32, generator=g)
    t = torch.arange(batch) % tasks
    noise = torch.randn(batch, model.latent_dim, generator=g)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x, t, noise=noise)
        loss = F.mse_loss(out.x_hat, x) + 2.5e-4 * out.kl().mean()
        loss.backward()
        opt.step()

    return step


def time_it(fn: Callable[[], None], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)  # other load on a shared machine only ever adds time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--learners", type=int, default=9)
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)")
    ap.add_argument("--no-ungrouped", action="store_true", help="skip the (slow) one-conv-per-connection row")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n, tasks, b = args.learners, args.tasks, args.batch
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {n} learners, {tasks} tasks, "
        f"top-K 2, batch {b} of 32×32, fastest of {args.repeats} steps after {args.warmup} warm-up"
    )
    rows = [("none", None, BAIM), ("h=3", 3, BAIM), ("h=3 closure", 3, ClosureOnly)]
    if not args.no_ungrouped:
        rows.append(("h=3 ungrouped", 3, Ungrouped))
    per_image: dict[str, float] = {}
    conns: dict[str, int] = {}
    print(f"{'model':14} {'conns':>6} {'ms/step':>9} {'ms/image':>9} {'vs none':>8}")
    for label, height, cls in rows:
        model = build(n, tasks, height, cls)
        t = time_it(train_step(model, b, tasks), args.repeats, args.warmup)
        per_image[label], conns[label] = t / b, len(model.connections)
        if label == "h=3":
            stage_macs, proj_macs = macs_per_image(model)
        print(
            f"{label:14} {conns[label]:>6} {t * 1e3:>9.1f} {t / b * 1e3:>9.2f} "
            f"{per_image[label] / per_image['none']:>8.2f}"
        )
        del model
    print(
        f"multiply-adds per image through every learner: stages {stage_macs / 1e6:.1f} M, "
        f"projections {proj_macs / 1e6:.1f} M ({proj_macs / stage_macs:.1f}×)"
    )
    result = {
        "ratio": round(per_image["h=3"] / per_image["none"], 3),
        "ratio_closure_floor": round(per_image["h=3 closure"] / per_image["none"], 3),
        "ms_per_image": {k: round(v * 1e3, 3) for k, v in per_image.items()},
        "connections": conns["h=3"],
        "stage_mmacs_per_image": round(stage_macs / 1e6, 1),
        "projection_mmacs_per_image": round(proj_macs / 1e6, 1),
        "learners": n,
        "tasks": tasks,
        "batch": b,
        "threads": torch.get_num_threads(),
    }
    if "h=3 ungrouped" in per_image:
        result["ratio_ungrouped"] = round(per_image["h=3 ungrouped"] / per_image["none"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
