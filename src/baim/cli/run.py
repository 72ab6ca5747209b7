"""``baim run`` and ``baim sweep``: the whole workflow, once or over seeds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..runfiles import RunFiles
from .common import Formatter, Subparsers, console, data_args, edge_list, extractor_arg, int_in


def _cmd_run(args: argparse.Namespace) -> None:
    from ..config import RunConfig, default_extractor, run_overrides
    from ..engines import run
    from ..study.tune import load_tuned

    tuned, tuned_recipe = load_tuned(args.tuned) if args.tuned else ({}, None)
    cfg = RunConfig(
        preset=args.preset,
        seed=args.seed,
        dataset=args.dataset,
        data_dir=args.data_dir,
        fid_extractor=args.fid_extractor or default_extractor(args.dataset),
        engine=args.engine,
        strategies=tuple(args.strategies.split(",")),
        cloud_recipe=tuned_recipe or args.cloud_recipe,
        schedule=args.schedule,
        staleness=args.staleness,
        leave=args.leave,
        join_late=args.join_late,
        overrides=run_overrides(args.few_shot, not args.no_cross_task_connections)
        | ({"download_budget": args.download_budget} if args.download_budget is not None else {})
        | tuned,
    )
    summary = run(args.out, cfg)
    console.print(
        f"run finished in {summary['wall_seconds']:.0f} s; summary: {RunFiles(args.out).summary}, "
        f"report: {RunFiles(args.out).report}"
    )


def _cmd_sweep(args: argparse.Namespace) -> None:
    from ..config import RunConfig, default_extractor
    from ..errors import ConfigError
    from ..sweep import sweep

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers, e.g. 0,1,2 (got {args.seeds!r})") from None
    if any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds must be non-negative integers (got {args.seeds!r})")
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ConfigError("a sweep needs at least two distinct seeds, e.g. --seeds 0,1,2")
    base = RunConfig(
        preset=args.preset,
        dataset=args.dataset,
        data_dir=args.data_dir,
        fid_extractor=args.fid_extractor or default_extractor(args.dataset),
        cloud_recipe=args.cloud_recipe,
    )
    summary = sweep(args.out, base, seeds)
    claims = json.loads((Path(args.out) / "claims.json").read_text())
    for c in claims:
        mark = "[green]holds[/green]" if c["holds"] else "[red]does not hold[/red]"
        console.print(f"{mark} ({c['holds_on_seeds']}/{c['seeds']} seeds): {c['claim']}")
    console.print(f"sweep of {len(summary['seeds'])} seeds: {RunFiles(args.out).report}")


def add_run(sub: Subparsers, fmt: Formatter) -> None:
    """``baim run``: the workflow end to end, with its lifecycle settings."""
    from ..config import ENGINES, SCHEDULES, STRATEGIES
    from ..presets import CLOUD_RECIPES, PRESETS

    sp = sub.add_parser("run", formatter_class=fmt, help="the workflow end to end into a run directory (resumable)")
    data_args(sp)
    sp.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="named run settings (see README)")
    sp.add_argument("--seed", type=int_in(0), default=0, help="seed of layout, training and sampling")
    extractor_arg(sp)
    sp.add_argument(
        "--engine",
        default="inprocess",
        choices=ENGINES[:2],
        help="in this process, or Flower's "
        "simulation engine (the deployment engine starts with `flwr run`, see README)",
    )
    sp.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help=f"comma-separated, from {', '.join(STRATEGIES)}; the first of finetune or the list is "
        "partitioned and deployed",
    )
    sp.add_argument(
        "--cloud-recipe",
        default="gentle",
        choices=CLOUD_RECIPES,
        help="how models that start from trained weights are fine-tuned (BAIM finetune/freeze, personalisation): "
        "gentle (trained weights and gates at 0.1× the rate, BatchNorm statistics kept, gates start on the "
        "best-screened upload) or paper (plain Adam 0.005 for everything)",
    )
    sp.add_argument(
        "--schedule",
        default="sync",
        choices=SCHEDULES,
        help="sync: fuse once every upload is in (the paper); async: fuse at the first quorum (every task one "
        "upload, simulated arrival times), integrate later uploads by continual learning and redeploy",
    )
    sp.add_argument(
        "--staleness",
        type=int_in(0),
        default=0,
        help="async: BAIM versions an edge's model may lag its task's newest before it is redeployed",
    )
    sp.add_argument("--leave", type=edge_list, default=(), help="edges (e.g. 1,4) that leave right after uploading")
    sp.add_argument(
        "--join-late", type=edge_list, default=(), help="async: edges (e.g. 2) that join after the first deployment"
    )
    sp.add_argument(
        "--few-shot",
        action="append",
        default=[],
        metavar="TASK=N",
        help="keep only N of TASK's cloud common images (repeatable or comma-separated, e.g. tops=10,footwear=50); "
        "the dropped images go to nobody, so edges hold exactly what they hold in the full run",
    )
    sp.add_argument(
        "--tuned",
        default=None,
        help="a tune.json from `baim tune`: its per-tier rates (and its cloud recipe, if it tuned one, over "
        "--cloud-recipe)",
    )
    sp.add_argument(
        "--no-cross-task-connections",
        action="store_true",
        help="candidate connections only between learners of the same squad (to measure what other tasks add)",
    )
    sp.add_argument(
        "--download-budget",
        default=None,
        metavar="BUDGET",
        help="what each edge may download: a factor of its own upload's bytes (default 1.25), megabytes (3MB), "
        "or none (the lossless compact model of its task)",
    )
    sp.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
    sp.set_defaults(func=_cmd_run)


def add_sweep(sub: Subparsers, fmt: Formatter) -> None:
    """``baim sweep``: ``baim run`` over several seeds."""
    from ..presets import CLOUD_RECIPES, PRESETS

    sp = sub.add_parser(
        "sweep", formatter_class=fmt, help="the workflow over several seeds, with mean ± std and the paper's claims"
    )
    data_args(sp)
    sp.add_argument("--preset", default="fig5", choices=sorted(PRESETS), help="named run settings (see README)")
    sp.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (at least two)")
    extractor_arg(sp)
    sp.add_argument("--cloud-recipe", default="gentle", choices=CLOUD_RECIPES, help="see `baim run --help`")
    sp.add_argument("--out", required=True, help="sweep directory (one resumable run per seed inside)")
    sp.set_defaults(func=_cmd_sweep)
