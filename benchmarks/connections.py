"""How much slower does a BAIM train with every candidate connection at h = 3, and what does
the cheaper (low-rank) projection cost in quality?

    python benchmarks/connections.py [--rank 8] [--candidates own|all] [--learners 9] [--batch 64] [--repeats 4]
    python benchmarks/connections.py --quality [--ranks 8] [--own] [--seeds 0,1,2] [--epochs 6]

**Timing** (the default). Builds a BAIM of small/medium/large learners (tiers cycled within
each task, as the layout does) with every candidate connection at h = 3 and α = 0.1, and the
same BAIM without connections, and times one training step (forward, pixel-mean MSE + β·KL,
backward, Adam step) per image. Rows, for two candidate sets, ``all`` (every ordered pair of
learners) and ``own`` (pairs within a squad only, no cross-task connections):

- ``none``: no connections.
- ``… rank r``: the rank-r projection through shared codes (:class:`LowRankProjection`: one
  code per source stage, one up-projection per target stage, a scalar gate per connection).
- ``… exact``: the exact 1×1 projections (:class:`Projection`), the projections into one
  target stage run as a few wide convolutions.
- ``… closure``: every projection's value times 0: the cost of the stages the connections
  force to run without the projections, the floor for any P. Each row also reports the stage
  multiply-adds per image that a step actually runs, encoder + decoder: where that floor
  comes from.
- ``all ungrouped`` (``--ungrouped``): exact, one convolution per connection.

The gate is fixed (noise off, a random z-dependent choice that spreads samples over each
squad), and so is the reparameterisation noise, so that every step dispatches the same
sample sets; the rows take turns step by step (a shared machine's load falls on all alike).
The last line is one JSON object; ``ratio`` = per-image time with the rank-r projection over
the candidates ``--candidates`` (default ``own``, the chosen design) / without connections;
``ratio_by_row``: every row's.

**Quality** (``--quality``). A small controlled experiment: per seed, three Fashion-MNIST tasks,
two edge learners each (small/medium/large cycled) trained on their own images, fused with every
candidate at h = 3 and no pruning, trained on a few hundred common images with the quick
preset's cloud recipe for the same epochs from the same seed, once per projection (none, exact,
rank r…); reports each task's test loss and the paired differences against the exact
projection, mean ± std over seeds. The last line is one JSON object of it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from statistics import mean, stdev
from typing import cast

os.environ.setdefault("BAIM_QUIET", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.stats import t as t_dist  # noqa: E402

from baim.cloud import fuse  # noqa: E402
from baim.config import Recipe  # noqa: E402
from baim.data import load_fashion_mnist  # noqa: E402
from baim.edge.train import train_learner  # noqa: E402
from baim.learners import StagedVAE, tier_spec  # noqa: E402
from baim.models import BAIM, LowRankProjection, Projection, candidate_connections, train_baim  # noqa: E402
from baim.models.evaluation import reconstruction_metrics  # noqa: E402
from baim.presets import get_preset  # noqa: E402

TIERS = ("small", "medium", "large")


class Ungrouped(BAIM):
    """One convolution per connection, summed (how projections ran before grouping)."""

    def _project(self, names: list[str], feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.connections[n](f) for n, f in zip(names, feats)]).sum(0)


class ClosureOnly(BAIM):
    """The projections' values times 0, so gradients still flow through every source stage."""

    def _project(self, names: list[str], feats: list[torch.Tensor]) -> torch.Tensor:
        return 0 * torch.stack([f.sum() for f in {id(f): f for f in feats}.values()]).sum()


def stage_macs(model: BAIM) -> dict[tuple[str, int, int], int]:
    """Multiply-adds of each stage ``(side, learner, stage)`` for one image."""
    out = {}
    for l in range(len(model.learners)):
        spec = model.learner(l).spec
        w = list(spec.stage_widths)
        for s, (cin, (cout, side)) in enumerate(zip([spec.channels] + w[:-1], model.learner(l).encoder_shapes())):
            out[("enc", l, s)] = 9 * cin * cout * side * side
        for s, (cin, (cout, side)) in enumerate(zip(w[::-1], model.learner(l).decoder_shapes())):
            out[("dec", l, s)] = 9 * cin * cout * (side // 2) ** 2  # transposed: one 3×3 product per input pixel
    return out


def macs_run(model: BAIM, step: Callable[[], None], batch: int) -> dict[str, float]:
    """Multiply-adds per image of the stages one training step actually runs, by side: where
    the closure's cost comes from (every stage a connection reads must run on the target's
    samples)."""
    model.stage_calls.clear()
    step()
    macs = stage_macs(model)
    return {
        side: sum(n * macs[k] for k, n in model.stage_calls.items() if k[0] == side) / batch for side in ("enc", "dec")
    }


def macs_per_image(model: BAIM) -> tuple[float, float]:
    """(multiply-adds of every stage of every learner, of every projection) for one image run
    through all of them: what all connections cost before any sparsity. Each exact projection
    runs at the smaller of its two sides (the resizes commute with it); low-rank: each shared
    code at its source's side, each up-projection at its target's, and per connection one
    scaled add of r channels."""
    stages = sum(stage_macs(model).values())
    proj = 0
    for p in model.connections.values():
        if isinstance(p, LowRankProjection):  # one scaled add of r channels at the smaller side
            proj += p.up.in_channels * min(p.side_in, p.side_out) ** 2
        else:
            p = cast(Projection, p)
            proj += p.conv.in_channels * p.conv.out_channels * min(p.side_in, p.side_out) ** 2
    shared = {}  # each shared code and up-projection once, at its own stage's side
    for c in model.conn_keys.values():
        shared[("down", c.source)] = (model.projection_downs, c.source, c.side, c.src, c.src_stage)
        shared[("up", c.target)] = (model.projection_ups, c.target, c.side, c.dst, c.dst_stage)
    for maps, key, side, learner, stage in shared.values():
        if key in maps:
            conv = cast(torch.nn.Conv2d, maps[key])
            proj += conv.in_channels * conv.out_channels * model.stage_shape(side, learner, stage)[1] ** 2
    return stages, proj


def build(n: int, tasks: int, height: int | None, cls: type[BAIM] = BAIM, rank: int = 0, own: bool = False) -> BAIM:
    """``own``: only the candidates within a squad (no cross-task connections)."""
    torch.manual_seed(0)
    learner_tasks: list[int | None] = [l % tasks for l in range(n)]
    learners = [StagedVAE(tier_spec(TIERS[(l // tasks + l % tasks) % 3])) for l in range(n)]
    counts = [(lrn.spec.num_stages,) * 2 for lrn in learners]
    conns = candidate_connections(counts, height) if height is not None else []
    conns = [c for c in conns if not own or learner_tasks[c.src] == learner_tasks[c.dst]]
    model = cls.from_learners(
        learners, learner_tasks, [f"t{t}" for t in range(tasks)], conns, top_k=2, projection_rank=rank
    )
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


def time_interleaved(steps: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, float]:
    """Fastest of ``repeats`` steps per row, the rows taking turns, so that a shared machine's
    changing load falls on every row alike (other load only ever adds time)."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(repeats):
        for label, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    return {label: min(ts) for label, ts in times.items()}


def timing(args: argparse.Namespace) -> None:
    n, tasks, b, r = args.learners, args.tasks, args.batch, args.rank
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {n} learners, {tasks} tasks, "
        f"top-K 2, batch {b} of 32×32, fastest of {args.repeats} steps after {args.warmup} warm-up"
    )
    extra = [int(x) for x in args.also_ranks.split(",") if x.strip() and int(x) != r]
    rows: list[tuple[str, int | None, type[BAIM], int, bool]] = [("none", None, BAIM, 0, False)]
    for scope, own in (("all", False), ("own", True)):
        rows += [(f"{scope} rank {x}", 3, BAIM, x, own) for x in [r, *extra]]
        rows += [(f"{scope} exact", 3, BAIM, 0, own), (f"{scope} closure", 3, ClosureOnly, 0, own)]
    if args.ungrouped:
        rows.append(("all ungrouped", 3, Ungrouped, 0, False))
    conns: dict[str, int] = {}
    macs: dict[str, tuple[float, float]] = {}
    run: dict[str, dict[str, float]] = {}
    steps: dict[str, Callable[[], None]] = {}
    for label, height, cls, rank, own in rows:
        model = build(n, tasks, height, cls, rank, own)
        conns[label], macs[label] = len(model.connections), macs_per_image(model)
        steps[label] = train_step(model, b, tasks)
        run[label] = macs_run(model, steps[label], b)
    step_time = time_interleaved(steps, args.repeats, args.warmup)
    per_image = {label: t / b for label, t in step_time.items()}
    print("all: every candidate at h = 3; own: every candidate within a squad at h = 3")
    print(
        f"{'model':16} {'conns':>6} {'ms/step':>9} {'ms/image':>9} {'vs none':>8} {'proj MMAC/img':>14} "
        f"{'stages run MMAC/img enc+dec':>28}"
    )
    for label in steps:
        print(
            f"{label:16} {conns[label]:>6} {step_time[label] * 1e3:>9.1f} {per_image[label] * 1e3:>9.2f} "
            f"{per_image[label] / per_image['none']:>8.2f} {macs[label][1] / 1e6:>14.1f} "
            f"{run[label]['enc'] / 1e6:>13.1f} + {run[label]['dec'] / 1e6:.1f}"
        )
    print(f"multiply-adds per image through every stage of every learner: {macs['all exact'][0] / 1e6:.1f} M")
    chosen = f"{args.candidates} rank {r}"
    ratio = {label: round(per_image[label] / per_image["none"], 3) for label in per_image}
    result = {
        "ratio": ratio[chosen],
        "projection": f"shared codes r={r}",
        "candidates": {"all": "every candidate at h = 3", "own": "every within-squad candidate at h = 3"}[
            args.candidates
        ],
        "rank": r,
        "ratio_by_row": ratio,
        "ms_per_image": {k: round(v * 1e3, 3) for k, v in per_image.items()},
        "connections": conns,
        "stages_run_mmacs_per_image": {k: {s: round(v / 1e6, 1) for s, v in m.items()} for k, m in run.items()},
        "projection_mmacs_per_image": {k: round(m[1] / 1e6, 1) for k, m in macs.items() if k != "none"},
        "stage_mmacs_per_image_all_learners": round(macs["all exact"][0] / 1e6, 1),
        "learners": n,
        "tasks": tasks,
        "batch": b,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


# -- quality: the projections at equal steps ------------------------------------------------------
def _split(ds, seed: int, edge_images: int, cloud_images: int, test_images: int):
    """Per task: two edges' images, the cloud's common images, test images (disjoint, seeded)."""
    rng = np.random.default_rng(seed)
    labels_train, labels_test = ds.train.labels, ds.test.labels
    edges, cloud, cloud_tasks, tests = [], [], [], {}
    for t, task in enumerate(ds.tasks):
        pool = rng.permutation(np.flatnonzero(np.isin(labels_train, task.classes)))
        for e in range(2):
            edges.append((t, ds.train.load(np.sort(pool[e * edge_images : (e + 1) * edge_images]))))
        start = 2 * edge_images
        cloud.append(ds.train.load(np.sort(pool[start : start + cloud_images])))
        cloud_tasks += [t] * cloud_images
        test_pool = rng.permutation(np.flatnonzero(np.isin(labels_test, task.classes)))
        tests[t] = ds.test.load(np.sort(test_pool[:test_images]))
    return edges, np.concatenate(cloud), np.asarray(cloud_tasks), tests


def quality(args: argparse.Namespace) -> None:
    ds = load_fashion_mnist(os.environ.get("BAIM_FMNIST_DIR"))
    names = [t.name for t in ds.tasks]
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    variants = ["none", "exact"] + [f"rank {r}" for r in ranks] + [f"own rank {r}" for r in ranks if args.own]
    if args.variants:
        variants = [v for v in variants if v in args.variants.split(",")]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    cloud_recipe = replace(get_preset("quick").cloud, epochs=args.epochs, batch_size=args.cloud_batch)
    print(
        f"quality: {len(names)} tasks × 2 edges ({args.edge_images} images, {args.edge_epochs} epochs each); "
        f"{args.cloud_images} common images per task; every candidate at h = 3, no pruning; cloud recipe "
        f"{cloud_recipe}; test {args.test_images} images per task; seeds {seeds}"
    )
    per: dict[str, dict[int, dict]] = {v: {} for v in variants}
    for seed in seeds:
        edges, images, tasks, tests = _split(ds, seed, args.edge_images, args.cloud_images, args.test_images)
        torch.manual_seed(seed)
        learners, owners = [], []
        for k, (t, imgs) in enumerate(edges):
            m = StagedVAE(tier_spec(TIERS[k % 3]))
            train_learner(m, imgs, Recipe(args.edge_epochs, seed=seed + k))
            learners.append(m.eval())
            owners.append(t)
        for v in variants:
            rank = 0 if v in ("none", "exact") else int(v.split()[-1])
            model = fuse(
                learners,
                owners,
                names,
                height=3,
                seed=seed,
                connections=v != "none",
                cross_task=not v.startswith("own"),
                projection_rank=rank,
            )
            t0 = time.perf_counter()
            train_baim(model, images, tasks, cloud_recipe.with_seed(seed), pretrained=set(range(len(learners))))
            seconds = time.perf_counter() - t0
            loss = {names[t]: reconstruction_metrics(model, x, t, seed=seed)["test_loss"] for t, x in tests.items()}
            per[v][seed] = {
                "test_loss": loss,
                "mean": float(np.mean(list(loss.values()))),
                "train_seconds": round(seconds, 1),
                "connections": len(model.connections),
                "connection_parameters": sum(
                    p.numel() for n, p in model.named_parameters() if n.startswith(("connections.", "projection_"))
                ),
            }
            print(f"  seed {seed} {v:10} test loss {per[v][seed]['mean']:.5f}  ({seconds:.0f} s)", flush=True)

    def pm(xs: list[float]) -> str:
        return f"{mean(xs):.5f} ± {stdev(xs):.5f}" if len(xs) > 1 else f"{xs[0]:.5f}"

    print(f"\n{'projection':12} {'conn params':>12} {'train s':>8} " + " ".join(f"{n:>20}" for n in names + ["mean"]))
    for v in variants:
        cells = [pm([per[v][s]["test_loss"][n] for s in seeds]) for n in names] + [
            pm([per[v][s]["mean"] for s in seeds])
        ]
        print(
            f"{v:12} {per[v][seeds[0]]['connection_parameters']:>12,} "
            f"{mean(per[v][s]['train_seconds'] for s in seeds):>8.0f} " + " ".join(f"{c:>20}" for c in cells)
        )
    ref = "exact" if "exact" in variants else "none"
    print(f"paired difference against {ref} (same seed), mean test loss over tasks, ± std [95 % t-interval]:")
    deltas = {}
    for v in variants:
        if v != ref and ref in variants:
            d = [per[v][s]["mean"] - per[ref][s]["mean"] for s in seeds]
            half = float(t_dist.ppf(0.975, len(d) - 1) * stdev(d) / len(d) ** 0.5) if len(d) > 1 else float("nan")
            deltas[v] = {"mean": mean(d), "std": stdev(d) if len(d) > 1 else 0.0, "ci95_half": half, "per_seed": d}
            print(
                f"  {v:10} {pm(d)} [{mean(d) - half:+.5f}, {mean(d) + half:+.5f}]  per seed {[round(x, 5) for x in d]}"
            )
    print(
        json.dumps(
            {
                "seeds": seeds,
                "epochs": args.epochs,
                "cloud_images_per_task": args.cloud_images,
                "runs": {v: {str(s): r for s, r in by.items()} for v, by in per.items()},
                f"delta_vs_{ref}": deltas,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=8, help="rank r of the low-rank projection timed")
    ap.add_argument(
        "--candidates", choices=("all", "own"), default="own", help="the rows whose ratio is the last line's `ratio`"
    )
    ap.add_argument("--also-ranks", default="", help="timing: more ranks, comma-separated (rows for reference)")
    ap.add_argument("--learners", type=int, default=9)
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)")
    ap.add_argument("--ungrouped", action="store_true", help="also the (slow) one-conv-per-connection exact row")
    ap.add_argument("--quality", action="store_true", help="the quality experiment instead of the timing")
    ap.add_argument("--ranks", default="4,8", help="quality: comma-separated ranks compared with the exact projection")
    ap.add_argument("--variants", default="", help="quality: only these (comma-separated, e.g. none,own rank 8)")
    ap.add_argument("--own", action="store_true", help="quality: also each rank with within-squad candidates only")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=6, help="quality: cloud epochs (equal for every projection)")
    ap.add_argument("--cloud-batch", type=int, default=32)
    ap.add_argument("--cloud-images", type=int, default=100, help="quality: common images per task")
    ap.add_argument("--edge-images", type=int, default=300)
    ap.add_argument("--edge-epochs", type=int, default=3)
    ap.add_argument("--test-images", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    quality(args) if args.quality else timing(args)


if __name__ == "__main__":
    main()
