"""``baim cloud``: the cloud's steps one at a time (train, partition, prune learners, add a task), for an
operator who runs them by hand rather than through ``baim run``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import Formatter, Subparsers, console, extractor_arg, float_in, int_in


def _door(args: argparse.Namespace) -> dict:
    """The door's keyword arguments from ``--edge-keys``, ``--accept-unsigned``, ``--skip-screening``."""
    from ..cloud.door import Waivers
    from ..signing import read_edge_keys

    waivers = Waivers(accept_unsigned=args.accept_unsigned, skip_screening=args.skip_screening)
    return {"keys": read_edge_keys(args.edge_keys) if args.edge_keys else None, "waivers": waivers}


def _door_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--edge-keys",
        default=None,
        help="the operator's registered edge keys (JSON edge -> hex Ed25519 public key, as `baim deploy "
        "credentials` writes edge_keys.json): a signed upload must verify with its edge's key",
    )
    parser.add_argument(
        "--accept-unsigned",
        action="store_true",
        help="let unsigned learners in, unverified (recorded in the run's files); refused otherwise",
    )
    parser.add_argument(
        "--skip-screening",
        action="store_true",
        help="let learners in without screening's rules (still validated and measured; recorded); "
        "for a learner you trust",
    )


def _cmd_cloud_train(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from ..atomic import write_json
    from ..cloud.uploads import read_uploads
    from ..config import default_extractor
    from ..data import load_dataset
    from ..data.layout import Layout
    from ..metrics import get_extractor
    from ..workflow import phases
    from ..workflow.context import accepted_learners

    layout = Layout.load(args.layout)
    extractor = args.fid_extractor or default_extractor(layout.dataset)
    get_extractor(extractor)  # an unavailable FID network is refused before training, not after
    ds = load_dataset(layout.dataset, layout.data_dir)
    preset = layout.settings.with_overrides(
        top_k=args.top_k,
        height=args.height,
        prune_interval=args.prune_interval,
        prune_ratio=args.prune_ratio,
        cloud_evaluation=True,  # this command's job is to train and score (a study's layout turns it off)
    )
    if args.epochs is not None:
        preset = replace(preset, cloud=replace(preset.cloud, epochs=args.epochs))
    uploads = read_uploads(args.uploads)
    screened = phases.screen(layout, ds, uploads, **_door(args))  # the workflow's screening phase: the door
    record = write_json(Path(args.out) / "screening.json", screened.to_json())
    for r in screened.rejected + screened.quarantined:
        console.print(f"[yellow]upload {r['edge']} not fused:[/yellow] {r['reason']}")
    result, _ = phases.train(  # the workflow's cloud phase, into --out
        accepted_learners(uploads, screened, layout, ds),
        layout,
        ds,
        preset,
        args.strategy,
        args.out,
        args.seed,
        extractor,
        screening_record=record,
    )
    keys = ("strategy", "final_test_loss", "connections", "candidates", "parameters", "tsgate_accuracy")
    shown = {k: getattr(result, k) for k in keys}
    shown["fid_fitted"] = {t: m["fid_fitted"] for t, m in result.per_task.items()}
    console.print_json(json.dumps(shown))


def _cmd_cloud_partition(args: argparse.Namespace) -> None:
    from ..cloud.budget import budgeted_from_run
    from ..models import save_model

    model, report = budgeted_from_run(args.run, args.task, round(args.budget_mb * 1_000_000), args.select)
    folder = save_model(model, args.out, {"budget.json": json.dumps(report, indent=2) + "\n"})
    shown = {k: v for k, v in report.items() if k not in ("kept_connections", "dropped_connections")}
    shown |= {k: len(report[k]) for k in ("kept_connections", "dropped_connections")}
    console.print_json(json.dumps(shown))
    console.print(f"wrote {folder} (what was kept and dropped: {folder / 'budget.json'})")


def _cmd_cloud_prune_learners(args: argparse.Namespace) -> None:
    from ..cloud.pruning import prune_learners_in_run

    report = prune_learners_in_run(args.run, args.threshold, strategy=args.strategy, out=args.out)
    console.print_json(json.dumps(report))


def _cmd_cloud_add(args: argparse.Namespace) -> None:
    from ..cloud.add import add_to_run

    report = add_to_run(
        args.run,
        args.learner,
        args.task,
        images_dir=args.images,
        strategy=args.strategy,
        epochs=args.epochs,
        train_old=args.train_old,
        out=args.out,
        seed=args.seed,
        **_door(args),
    )
    shown = {
        k: report[k]
        for k in (
            "saved",
            "touched_tasks",
            "new_tasks",
            "parameters_before",
            "parameters_after",
            "trained_parameters",
            "test_loss_before",
            "test_loss_after",
            "untouched_max_abs_diff",
            "compact_bytes",
            "held_out_loss",
            "delivery",
            "seconds",
        )
    }
    console.print_json(json.dumps(shown))


def add_cloud(sub: Subparsers, fmt: Formatter) -> None:
    """``baim cloud train | prune-learners | partition | add``: the cloud's steps, alone or on a finished run."""
    from ..config import STRATEGIES

    sp = sub.add_parser("cloud", formatter_class=fmt, help="cloud-side commands")
    csub = sp.add_subparsers(dest="cloud_command", required=True)
    tp = csub.add_parser(
        "train", formatter_class=fmt, help="screen uploads, fuse them into a BAIM and train it on common data"
    )
    tp.add_argument("--layout", required=True)
    tp.add_argument(
        "--uploads",
        required=True,
        help="folder of upload messages (*.msg) or of saved edge models (spec.json + weights)",
    )
    tp.add_argument("--strategy", default="finetune", choices=STRATEGIES)
    tp.add_argument("--out", required=True)
    tp.add_argument("--epochs", type=int_in(1), default=None, help="default: the layout's preset")
    tp.add_argument("--top-k", type=int_in(1), default=None)
    tp.add_argument("--height", type=int_in(0), default=None)
    tp.add_argument("--prune-interval", type=int_in(0), default=None)
    tp.add_argument("--prune-ratio", type=float_in(0, 1, closed=True), default=None)
    tp.add_argument("--seed", type=int_in(0), default=0, help="seed of layout, training and sampling")
    extractor_arg(tp)
    _door_args(tp)
    tp.set_defaults(func=_cmd_cloud_train)
    tp = csub.add_parser(
        "prune-learners",
        formatter_class=fmt,
        help="drop from a run's trained BAIM the learners their LSGate (almost) never picks; "
        "report parameters and quality before and after",
    )
    tp.add_argument("--run", required=True, help="run directory with a trained BAIM (RUN/cloud/baim-STRATEGY)")
    tp.add_argument(
        "--threshold",
        type=float_in(0, 1, closed=True),
        default=0.05,
        help="learners picked for less than this share of their task's assignments on the common data leave "
        "selection (with K picks per image a learner's share is at most 1/K)",
    )
    tp.add_argument("--strategy", default="finetune", choices=STRATEGIES)
    tp.add_argument("--out", default=None, help="default: RUN/cloud/baim-STRATEGY-pruned")
    tp.set_defaults(func=_cmd_cloud_prune_learners)
    tp = csub.add_parser(
        "partition",
        formatter_class=fmt,
        help="cut a finished run's BAIM into one task's compact model within a byte budget: lossless where "
        "it fits, else the squad's most-used learners and the strongest connections that fit",
    )
    tp.add_argument("--run", required=True, help="a run directory whose cloud training finished")
    tp.add_argument("--task", required=True, help="task name")
    tp.add_argument(
        "--budget-mb", type=float_in(0), required=True, help="the most the weights may take, in MB (10^6 bytes)"
    )
    tp.add_argument(
        "--select",
        default="loss",
        choices=("loss", "usage"),
        help="what a lossy cut keeps: what lowers the loss on the task's common images most, or what its LSGate "
        "picks most",
    )
    tp.add_argument("--out", required=True, help="folder for the compact model (manifest, weights, budget.json)")
    tp.set_defaults(func=_cmd_cloud_partition)
    tp = csub.add_parser(
        "add",
        formatter_class=fmt,
        help="a late learner joins a finished run's BAIM (its task's squad, or a new task): continual learning",
    )
    tp.add_argument("--run", required=True, help="a run directory with a trained BAIM")
    tp.add_argument(
        "--learner",
        required=True,
        help="an edge's signed upload message (*.msg), or a folder saved by `baim edge train` (unsigned: "
        "needs --accept-unsigned)",
    )
    tp.add_argument("--task", required=True, help="the task it serves: one of the BAIM's, or a new name")
    tp.add_argument("--images", default=None, help="a new task's common images (folder; 20%% held out to measure)")
    tp.add_argument("--strategy", default="finetune", choices=STRATEGIES, help="which of the run's BAIMs grows")
    tp.add_argument("--epochs", type=int_in(1), default=None, help="default: the run's cloud recipe")
    tp.add_argument(
        "--train-old",
        action="store_true",
        help="also train the old learners and gates (old tasks then change; by default they stay identical)",
    )
    tp.add_argument("--out", default=None, help="default: RUN/cloud/baim-STRATEGY-added-TASK")
    tp.add_argument("--seed", type=int_in(0), default=0)
    _door_args(tp)
    tp.set_defaults(func=_cmd_cloud_add)
