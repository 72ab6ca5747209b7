"""``baim layout``, ``baim edge``, ``baim evaluate`` and ``baim domain``: the commands an edge (or a user with one
model) runs, each a thin shell over a library function."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from ..runfiles import RunFiles
from .common import Formatter, Subparsers, console, data_args, extractor_arg, float_in, int_in


def _cmd_layout(args: argparse.Namespace) -> None:
    from ..data import load_dataset
    from ..data.layout import class_histogram, make_layout
    from ..presets import get_preset

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
    from ..edge import train_edge_cli, train_on_images
    from ..errors import ConfigError

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
    from ..edge import evaluate_saved_model

    result = evaluate_saved_model(
        args.model, args.layout, args.task, fid_extractor=args.fid_extractor, fid_count=args.fid_count, seed=args.seed
    )
    console.print_json(json.dumps(result))


def _cmd_domain_train(args: argparse.Namespace) -> None:
    from ..data import load_dataset
    from ..metrics.domain import train_domain_classifier, weights_dir

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


def add_layout(sub: Subparsers, fmt: Formatter) -> None:
    """``baim layout``: a federation layout alone."""
    from ..presets import PRESETS

    sp = sub.add_parser(
        "layout", formatter_class=fmt, help="create a federation layout (edges, cloud, test) as JSON indices"
    )
    data_args(sp)
    sp.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="named run settings (see README)")
    sp.add_argument("--edges", type=int_in(1), default=None, help="override the preset's number of edges")
    sp.add_argument("--alpha", type=float_in(0), default=None, help="override the Dirichlet concentration")
    sp.add_argument("--seed", type=int_in(0), default=0, help="seed of layout, training and sampling")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=_cmd_layout)


def add_edge(sub: Subparsers, fmt: Formatter) -> None:
    """``baim edge train``: one edge's learner, on a layout's slice or a folder of images."""
    from ..learners.spec import TIERS

    sp = sub.add_parser("edge", formatter_class=fmt, help="edge-side commands")
    esub = sp.add_subparsers(dest="edge_command", required=True)
    tp = esub.add_parser("train", formatter_class=fmt, help="train one edge's learner on its local slice")
    tp.add_argument("--layout", default=None, help="the federation layout (with --edge)")
    tp.add_argument("--edge", type=int_in(0), default=None, help="which edge of the layout")
    tp.add_argument("--images", default=None, help="instead of a layout: a folder of your own images")
    tp.add_argument("--tier", default="small", choices=TIERS, help="with --images: the learner's tier")
    tp.add_argument("--image-size", type=int_in(8, 1024), default=32, help="with --images: side in pixels")
    tp.add_argument("--channels", type=int, choices=(1, 3), default=1, help="with --images: 1 grey, 3 RGB")
    tp.add_argument("--out", required=True, help="folder for manifest.json + weights.safetensors + metrics.json")
    tp.add_argument("--epochs", type=int_in(1), default=None, help="default: the layout's preset (--images: 4)")
    tp.add_argument("--seed", type=int_in(0), default=0, help="seed of layout, training and sampling")
    tp.set_defaults(func=_cmd_edge_train)


def add_evaluate(sub: Subparsers, fmt: Formatter) -> None:
    """``baim evaluate``: any saved learner or compact model on a task."""
    sp = sub.add_parser(
        "evaluate",
        formatter_class=fmt,
        help="test loss, MSE/PSNR, FID and KID of a saved learner or compact model on a task",
    )
    sp.add_argument("--model", required=True, help="folder of a saved model (manifest.json + weights.safetensors)")
    sp.add_argument("--layout", required=True)
    sp.add_argument("--task", required=True, help="task name or index")
    extractor_arg(sp)
    sp.add_argument("--fid-count", type=int_in(2), default=500, help="generated (and real) images per FID")
    sp.add_argument("--seed", type=int_in(0), default=0, help="seed of layout, training and sampling")
    sp.set_defaults(func=_cmd_evaluate)


def add_domain(sub: Subparsers, fmt: Formatter) -> None:
    """``baim domain train``: the domain FID feature network."""
    sp = sub.add_parser("domain", formatter_class=fmt, help="the domain FID feature network")
    dsub = sp.add_subparsers(dest="domain_command", required=True)
    tp = dsub.add_parser(
        "train", formatter_class=fmt, help="train the Fashion-MNIST classifier and write its weights + card"
    )
    tp.add_argument("--data-dir", default=None)
    tp.add_argument("--epochs", type=int_in(1), default=4)
    tp.add_argument("--seed", type=int_in(0), default=0, help="seed of layout, training and sampling")
    tp.add_argument("--out", default=None, help="default: the package's weights folder")
    tp.set_defaults(func=_cmd_domain_train)
