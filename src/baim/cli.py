"""The ``baim`` command line. Each sub-command is a thin shell over a Python function; the
only errors it catches are :class:`baim.errors.BaimError` (the user can fix those: the message
says how), anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .runfiles import RunFiles

console = Console()


def _int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in lo..hi, refused at parse time (``--epochs 0`` would
    save an untrained model, a negative seed fails deep inside numpy)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(
                f"must be {'≥ ' + str(lo) if hi is None else f'in {lo}..{hi}'}, got {value}"
            )
        return value

    return parse


def _float_in(lo: float, hi: float | None = None, closed: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number between ``lo`` and ``hi`` (ends included if ``closed``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        inside = (lo <= value if closed else lo < value) and (hi is None or (value <= hi if closed else value < hi))
        if not math.isfinite(value) or not inside:
            wanted = f"{'≥' if closed else '>'} {lo}" + ("" if hi is None else f" and {'≤' if closed else '<'} {hi}")
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    return parse


def _edges(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated edge indices (``1,4``)."""
    parse = _int_in(0)
    return tuple(sorted({parse(part) for part in text.split(",") if part.strip()}))


def _cmd_layout(args: argparse.Namespace) -> None:
    from .config import get_preset
    from .data import load_dataset
    from .data.layout import class_histogram, make_layout

    ds = load_dataset(args.dataset, args.data_dir)
    preset = get_preset(args.preset).with_overrides(num_edges=args.edges, alpha=args.alpha)
    layout = make_layout(ds, preset, seed=args.seed, data_dir=args.data_dir)
    path = layout.save(RunFiles(args.out).layout)
    table = Table(title=f"{ds.name} layout, preset {preset.name}, seed {args.seed}, α = {preset.alpha}")
    for col in ("edge", "task", "tier", "size", "class histogram"):
        table.add_column(col)
    for e in layout.edges:
        hist = class_histogram(ds, e.indices)
        table.add_row(
            str(e.edge),
            layout.task_names[e.task],
            e.tier,
            str(len(e.indices)),
            "  ".join(f"{ds.class_names[c]}:{n}" for c, n in hist.items()),
        )
    table.add_row("cloud", "all", "-", str(len(layout.cloud)), "stratified over all tasks")
    console.print(table)
    console.print("test images per task: " + ", ".join(f"{k} {len(v)}" for k, v in layout.test.items()))
    console.print(f"wrote {path}")


def _cmd_edge_train(args: argparse.Namespace) -> None:
    from .edge import train_edge_cli, train_on_images
    from .errors import ConfigError

    if args.images is not None:
        if args.layout is not None or args.edge is not None:
            raise ConfigError("give either --images (your own folder) or --layout with --edge, not both")
        result = train_on_images(
            args.images, args.out, args.tier, args.image_size, args.channels, args.epochs or 4, args.seed
        )
    elif args.layout is None or args.edge is None:
        raise ConfigError("give --layout and --edge (an edge of a layout) or --images DIR (your own images)")
    else:
        result = train_edge_cli(args.layout, args.edge, args.out, epochs=args.epochs, seed=args.seed)
    console.print_json(json.dumps(result))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .edge import evaluate_saved_model

    result = evaluate_saved_model(
        args.model, args.layout, args.task, fid_extractor=args.fid_extractor, fid_count=args.fid_count, seed=args.seed
    )
    console.print_json(json.dumps(result))


def _cmd_cloud_train(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from .atomic import write_json
    from .cloud import common_data, screen_uploads, train_strategy
    from .cloud.uploads import read_uploads
    from .config import default_extractor
    from .data import load_dataset
    from .data.layout import Layout
    from .metrics import get_extractor

    layout = Layout.load(args.layout)
    extractor = args.fid_extractor or default_extractor(layout.dataset)
    get_extractor(extractor)  # an unavailable FID network is refused before training, not after
    ds = load_dataset(layout.dataset, layout.data_dir)
    preset = layout.settings.with_overrides(
        top_k=args.top_k, height=args.height, prune_interval=args.prune_interval, prune_ratio=args.prune_ratio
    )
    if args.epochs is not None:
        preset = replace(preset, cloud=replace(preset.cloud, epochs=args.epochs))
    images, tasks = common_data(layout, ds)
    common = {t: images[tasks == t] for t in range(len(layout.tasks))}
    screened = screen_uploads(read_uploads(args.uploads), layout.task_names, common, ds.image_size, ds.channels)
    write_json(Path(args.out) / "screening.json", screened.report())
    for r in screened.rejected + screened.quarantined:
        console.print(f"[yellow]upload {r['edge']} not fused:[/yellow] {r['reason']}")
    edges = sorted(screened.accepted)
    learners = [screened.accepted[e][0] for e in edges]
    ltasks = [layout.task_names.index(screened.accepted[e][1]["task"]) for e in edges]
    result, _ = train_strategy(
        learners,
        ltasks,
        layout,
        ds,
        preset,
        args.strategy,
        args.out,
        seed=args.seed,
        fid_extractor=extractor,
        screening_losses=[screened.scores[e] for e in edges],
    )
    shown = {
        k: result[k]
        for k in ("strategy", "final_test_loss", "connections", "candidates", "parameters", "tsgate_accuracy")
    }
    shown["fid_fitted"] = {t: m["fid_fitted"] for t, m in result["per_task"].items()}
    console.print_json(json.dumps(shown))


def _cmd_cloud_partition(args: argparse.Namespace) -> None:
    from .cloud.budget import budgeted_from_run
    from .models import save_model

    model, report = budgeted_from_run(args.run, args.task, round(args.budget_mb * 1_000_000), args.select)
    folder = save_model(model, args.out, {"budget.json": json.dumps(report, indent=2) + "\n"})
    shown = {k: v for k, v in report.items() if k not in ("kept_connections", "dropped_connections")}
    shown |= {k: len(report[k]) for k in ("kept_connections", "dropped_connections")}
    console.print_json(json.dumps(shown))
    console.print(f"wrote {folder} (what was kept and dropped: {folder / 'budget.json'})")


def _cmd_cloud_prune_learners(args: argparse.Namespace) -> None:
    from .cloud.pruning import prune_learners_in_run

    report = prune_learners_in_run(args.run, args.threshold, strategy=args.strategy, out=args.out)
    console.print_json(json.dumps(report))


def _cmd_cloud_add(args: argparse.Namespace) -> None:
    from .cloud.add import add_to_run

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
            "seconds",
        )
    }
    console.print_json(json.dumps(shown))


def _cmd_run(args: argparse.Namespace) -> None:
    from .config import RunConfig, default_extractor, run_overrides
    from .engines import run

    cfg = RunConfig(
        preset=args.preset,
        seed=args.seed,
        dataset=args.dataset,
        data_dir=args.data_dir,
        fid_extractor=args.fid_extractor or default_extractor(args.dataset),
        engine=args.engine,
        strategies=tuple(args.strategies.split(",")),
        cloud_recipe=args.cloud_recipe,
        schedule=args.schedule,
        staleness=args.staleness,
        leave=args.leave,
        join_late=args.join_late,
        overrides=run_overrides(args.few_shot, not args.no_cross_task_connections),
    )
    summary = run(args.out, cfg)
    console.print(
        f"run finished in {summary['wall_seconds']:.0f} s; summary: {RunFiles(args.out).summary}, "
        f"report: {RunFiles(args.out).report}"
    )


def _cmd_sweep(args: argparse.Namespace) -> None:
    from .config import RunConfig, default_extractor
    from .errors import ConfigError
    from .sweep import sweep

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


def _cmd_deploy_credentials(args: argparse.Namespace) -> None:
    from .federation.deploy import make_credentials

    made = make_credentials(args.out, args.nodes, args.host or None)
    console.print(f"wrote CA, SuperLink certificate and {args.nodes} SuperNode key pairs to {args.out}")
    console.print_json(json.dumps(made))


def _cmd_deploy_commands(args: argparse.Namespace) -> None:
    import shlex

    from .federation.deploy import APP_DIR, superlink_command, supernode_command, write_flower_config

    creds = Path(args.credentials)
    address = f"{args.superlink_host}:{args.port}"
    cfg = write_flower_config(args.flwr_home, address, creds / "ca.crt")

    def q(cmd: list[str]) -> str:  # config values hold single quotes: wrap those in double quotes
        return " ".join(f'"{c}"' if "'" in c else shlex.quote(c) for c in cmd)

    # plain print: commands must not be wrapped, so they can be copied
    print(f"# flwr connection 'baim' written to {cfg}; export FLWR_HOME={args.flwr_home}")
    print("# 1. on the cloud machine:")
    print(q(superlink_command(creds, args.listen, args.port)))
    for e in range(args.nodes):
        print(f"# 2.{e} register edge {e}'s key (cloud), then start its SuperNode (on edge {e}'s machine):")
        print(q(["flwr", "supernode", "register", str(creds / f"node-{e}.pub"), "baim"]))
        print(q(supernode_command(creds, creds / f"node-{e}", e, args.run_dir, address)))
    print("# 3. submit the workflow (cloud):")
    print(
        q(
            [
                "flwr",
                "run",
                str(APP_DIR),
                "baim",
                "--run-config",
                f"run-dir='{Path(args.run_dir).resolve()}' edges={args.nodes}",
            ]
        )
    )


def _cmd_domain_train(args: argparse.Namespace) -> None:
    from .data import load_dataset
    from .metrics.domain import train_domain_classifier, weights_dir

    ds = load_dataset("fashion-mnist", args.data_dir)
    tr, te = ds.train, ds.test
    card = train_domain_classifier(
        tr.load(range(len(tr))),
        tr.labels,
        te.load(range(len(te))),
        te.labels,
        epochs=args.epochs,
        seed=args.seed,
        out_dir=Path(args.out) if args.out else weights_dir(),
    )
    console.print_json(json.dumps(card))


EPILOG = """\
first steps (from a checkout):
  make demo   set up and run the whole quick workflow into runs/quick (open runs/quick/report.html)
  make test   set up and run the test suite
"""


Subparsers = argparse._SubParsersAction  # what add_subparsers returns
Formatter = type[argparse.HelpFormatter]


def _data_args(sp: argparse.ArgumentParser) -> None:
    from .config import DATASETS

    sp.add_argument("--dataset", default="fashion-mnist", choices=DATASETS, help="data set")
    sp.add_argument(
        "--data-dir",
        default=None,
        help="folder with the data set's files (fashion-mnist: /usr/share/datasets/fashion-mnist when not given)",
    )


def _extractor_arg(sp: argparse.ArgumentParser) -> None:
    from .config import EXTRACTORS

    sp.add_argument(
        "--fid-extractor",
        default=None,
        choices=EXTRACTORS,
        help="feature network of FID/KID; by default the one that fits the data set: domain (the committed "
        "Fashion-MNIST classifier) for fashion-mnist, lite0 (ImageNet EfficientNet-Lite0) otherwise",
    )


def _add_layout(sub: Subparsers, fmt: Formatter) -> None:
    """``baim layout``: a federation layout alone."""
    from .config import PRESETS

    sp = sub.add_parser(
        "layout", formatter_class=fmt, help="create a federation layout (edges, cloud, test) as JSON indices"
    )
    _data_args(sp)
    sp.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="named run settings (see README)")
    sp.add_argument("--edges", type=_int_in(1), default=None, help="override the preset's number of edges")
    sp.add_argument("--alpha", type=_float_in(0), default=None, help="override the Dirichlet concentration")
    sp.add_argument("--seed", type=_int_in(0), default=0, help="seed of layout, training and sampling")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=_cmd_layout)


def _add_edge(sub: Subparsers, fmt: Formatter) -> None:
    """``baim edge train``: one edge's learner, on a layout's slice or a folder of images."""
    from .learners.spec import TIERS

    sp = sub.add_parser("edge", formatter_class=fmt, help="edge-side commands")
    esub = sp.add_subparsers(dest="edge_command", required=True)
    tp = esub.add_parser("train", formatter_class=fmt, help="train one edge's learner on its local slice")
    tp.add_argument("--layout", default=None, help="the federation layout (with --edge)")
    tp.add_argument("--edge", type=_int_in(0), default=None, help="which edge of the layout")
    tp.add_argument("--images", default=None, help="instead of a layout: a folder of your own images")
    tp.add_argument("--tier", default="small", choices=TIERS, help="with --images: the learner's tier")
    tp.add_argument("--image-size", type=_int_in(8, 1024), default=32, help="with --images: side in pixels")
    tp.add_argument("--channels", type=int, choices=(1, 3), default=1, help="with --images: 1 grey, 3 RGB")
    tp.add_argument("--out", required=True, help="folder for manifest.json + weights.safetensors + metrics.json")
    tp.add_argument("--epochs", type=_int_in(1), default=None, help="default: the layout's preset (--images: 4)")
    tp.add_argument("--seed", type=_int_in(0), default=0, help="seed of layout, training and sampling")
    tp.set_defaults(func=_cmd_edge_train)


def _add_evaluate(sub: Subparsers, fmt: Formatter) -> None:
    """``baim evaluate``: any saved learner or compact model on a task."""
    sp = sub.add_parser(
        "evaluate",
        formatter_class=fmt,
        help="test loss, MSE/PSNR, FID and KID of a saved learner or compact model on a task",
    )
    sp.add_argument("--model", required=True, help="folder of a saved model (manifest.json + weights.safetensors)")
    sp.add_argument("--layout", required=True)
    sp.add_argument("--task", required=True, help="task name or index")
    _extractor_arg(sp)
    sp.add_argument("--fid-count", type=_int_in(2), default=500, help="generated (and real) images per FID")
    sp.add_argument("--seed", type=_int_in(0), default=0, help="seed of layout, training and sampling")
    sp.set_defaults(func=_cmd_evaluate)


def _add_cloud(sub: Subparsers, fmt: Formatter) -> None:
    """``baim cloud train | prune-learners | partition | add``: the cloud's steps, alone or on a finished run."""
    from .config import STRATEGIES

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
    tp.add_argument("--epochs", type=_int_in(1), default=None, help="default: the layout's preset")
    tp.add_argument("--top-k", type=_int_in(1), default=None)
    tp.add_argument("--height", type=_int_in(0), default=None)
    tp.add_argument("--prune-interval", type=_int_in(0), default=None)
    tp.add_argument("--prune-ratio", type=_float_in(0, 1, closed=True), default=None)
    tp.add_argument("--seed", type=_int_in(0), default=0, help="seed of layout, training and sampling")
    _extractor_arg(tp)
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
        type=_float_in(0, 1, closed=True),
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
        "--budget-mb", type=_float_in(0), required=True, help="the most the weights may take, in MB (10^6 bytes)"
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
    tp.add_argument("--learner", required=True, help="folder of a saved learner (an upload, or `baim edge train`)")
    tp.add_argument("--task", required=True, help="the task it serves: one of the BAIM's, or a new name")
    tp.add_argument("--images", default=None, help="a new task's common images (folder; 20%% held out to measure)")
    tp.add_argument("--strategy", default="finetune", choices=STRATEGIES, help="which of the run's BAIMs grows")
    tp.add_argument("--epochs", type=_int_in(1), default=None, help="default: the run's cloud recipe")
    tp.add_argument(
        "--train-old",
        action="store_true",
        help="also train the old learners and gates (old tasks then change; by default they stay identical)",
    )
    tp.add_argument("--out", default=None, help="default: RUN/cloud/baim-STRATEGY-added-TASK")
    tp.add_argument("--seed", type=_int_in(0), default=0)
    tp.set_defaults(func=_cmd_cloud_add)


def _add_run(sub: Subparsers, fmt: Formatter) -> None:
    """``baim run``: the workflow end to end, with its lifecycle settings."""
    from .config import CLOUD_RECIPES, ENGINES, PRESETS, SCHEDULES, STRATEGIES

    sp = sub.add_parser("run", formatter_class=fmt, help="the workflow end to end into a run directory (resumable)")
    _data_args(sp)
    sp.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="named run settings (see README)")
    sp.add_argument("--seed", type=_int_in(0), default=0, help="seed of layout, training and sampling")
    _extractor_arg(sp)
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
        type=_int_in(0),
        default=0,
        help="async: BAIM versions an edge's model may lag its task's newest before it is redeployed",
    )
    sp.add_argument("--leave", type=_edges, default=(), help="edges (e.g. 1,4) that leave right after uploading")
    sp.add_argument(
        "--join-late", type=_edges, default=(), help="async: edges (e.g. 2) that join after the first deployment"
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
        "--no-cross-task-connections",
        action="store_true",
        help="candidate connections only between learners of the same squad (to measure what other tasks add)",
    )
    sp.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
    sp.set_defaults(func=_cmd_run)


def _add_sweep(sub: Subparsers, fmt: Formatter) -> None:
    """``baim sweep``: ``baim run`` over several seeds."""
    from .config import CLOUD_RECIPES, PRESETS

    sp = sub.add_parser(
        "sweep", formatter_class=fmt, help="the workflow over several seeds, with mean ± std and the paper's claims"
    )
    _data_args(sp)
    sp.add_argument("--preset", default="fig5", choices=sorted(PRESETS), help="named run settings (see README)")
    sp.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (at least two)")
    _extractor_arg(sp)
    sp.add_argument("--cloud-recipe", default="gentle", choices=CLOUD_RECIPES, help="see `baim run --help`")
    sp.add_argument("--out", required=True, help="sweep directory (one resumable run per seed inside)")
    sp.set_defaults(func=_cmd_sweep)


def _add_deploy(sub: Subparsers, fmt: Formatter) -> None:
    """``baim deploy credentials | commands``: Flower's deployment engine."""
    sp = sub.add_parser("deploy", formatter_class=fmt, help="Flower deployment engine: credentials and commands")
    dsub = sp.add_subparsers(dest="deploy_command", required=True)
    tp = dsub.add_parser("credentials", formatter_class=fmt, help="CA, SuperLink TLS certificate, SuperNode key pairs")
    tp.add_argument("--out", required=True)
    tp.add_argument("--nodes", type=_int_in(1), required=True)
    tp.add_argument(
        "--host",
        action="append",
        help="SuperLink host name or IP for its certificate (repeatable; default 127.0.0.1 and localhost)",
    )
    tp.set_defaults(func=_cmd_deploy_credentials)
    tp = dsub.add_parser(
        "commands", formatter_class=fmt, help="write the flwr connection file and print every command to run"
    )
    tp.add_argument("--credentials", required=True)
    tp.add_argument("--nodes", type=_int_in(1), required=True)
    tp.add_argument("--run-dir", required=True, help="the run directory (holds layout.json)")
    tp.add_argument("--superlink-host", default="127.0.0.1", help="address SuperNodes and flwr use")
    tp.add_argument("--listen", default="127.0.0.1", help="address the SuperLink listens on")
    tp.add_argument("--port", type=_int_in(1, 65535), default=9093)
    tp.add_argument("--flwr-home", default=str(Path.home() / ".flwr"))
    tp.set_defaults(func=_cmd_deploy_commands)


def _add_domain(sub: Subparsers, fmt: Formatter) -> None:
    """``baim domain train``: the domain FID feature network."""
    sp = sub.add_parser("domain", formatter_class=fmt, help="the domain FID feature network")
    dsub = sp.add_subparsers(dest="domain_command", required=True)
    tp = dsub.add_parser(
        "train", formatter_class=fmt, help="train the Fashion-MNIST classifier and write its weights + card"
    )
    tp.add_argument("--data-dir", default=None)
    tp.add_argument("--epochs", type=_int_in(1), default=4)
    tp.add_argument("--seed", type=_int_in(0), default=0, help="seed of layout, training and sampling")
    tp.add_argument("--out", default=None, help="default: the package's weights folder")
    tp.set_defaults(func=_cmd_domain_train)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(
        prog="baim",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
        description="Edge-cloud collaborative generative AI: edges train small VAEs on private data, the cloud "
        "fuses them into a bottom-up big AI model (BAIM), cuts it into compact per-task models and "
        "sends them back to the edges.",
    )
    p.add_argument("--version", action="version", version=f"baim {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_layout, _add_edge, _add_evaluate, _add_cloud, _add_run, _add_sweep, _add_deploy, _add_domain):
        add(sub, fmt)
    from .service.commands import add_service_commands

    add_service_commands(sub, fmt)
    from .compare.commands import add_compare_command

    add_compare_command(sub, fmt)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import BaimError

    try:
        args.func(args)
    except BaimError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
