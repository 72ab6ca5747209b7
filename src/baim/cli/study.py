"""``baim study``: methods × budgets × seeds, resumable, with paired bootstrap intervals."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _shared(p: argparse.ArgumentParser, seeds: str, seeds_help: str, what: str) -> None:
    """The options ``study`` and ``tune`` share (the layouts, how trainings converge, the data)."""
    from ..presets import PRESETS
    from ..study.budget import CAP

    p.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="named run settings")
    p.add_argument("--seeds", default=seeds, help=seeds_help)
    p.add_argument(
        "--cap",
        type=int,
        default=CAP,
        help=f"most epochs (rounds) {what} may take (a bound, not a budget: patience should stop it first)",
    )
    p.add_argument("--patience", type=int, default=3, help=f"epochs without improvement before {what} stops")
    p.add_argument("--data-dir", default=None, help="folder of the data set (default: the installed one)")


def add_study(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    from ..config import EXTRACTORS
    from ..study import STUDY_METHODS

    sp = sub.add_parser(
        "study",
        formatter_class=fmt,
        help="every method at fixed and converged budgets over seeds; paired differences to baim",
    )
    _shared(sp, "0,1,2", "comma-separated seeds (one layout each), run in this order", "a converged training")
    sp.add_argument("--budgets", default="4,converged", help="comma-separated: epochs (e.g. 4) or 'converged'")
    sp.add_argument("--methods", default=",".join(STUDY_METHODS), help="comma-separated; must include baim")
    sp.add_argument("--fid-extractor", default="domain", choices=EXTRACTORS)
    sp.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes running cells at once, each with cores/jobs torch threads (about 6 GB each at quick)",
    )
    sp.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one unit of a --jobs study
    sp.add_argument(
        "--tuned",
        default=None,
        help="a tune.json from `baim tune`: every method trains each tier at its chosen rate (kd and fd with "
        "the weights it chose, the cloud with its recipe)",
    )
    sp.add_argument("--out", required=True, help="study folder (rerun the same command to resume)")
    sp.set_defaults(func=_cmd_study)

    tp = sub.add_parser(
        "tune",
        formatter_class=fmt,
        help="choose the edges' learning rate per tier (and the cloud's recipe, the distillation baselines' "
        "weights) on validation data (for study/run --tuned)",
    )
    _shared(tp, "0", "comma-separated seeds (layouts) pooled in the choice", "a trial")
    tp.add_argument("--lrs", default="0.001,0.002,0.005,0.01", help="candidate rates (the preset's is always added)")
    tp.add_argument(
        "--cloud",
        default="",
        help="then the cloud's recipe at the chosen rates, among these variants (gentle, paper, even-gates): "
        "one converging workflow run per variant and seed",
    )
    tp.add_argument(
        "--cloud-budgets",
        default="converged",
        help="the study budgets the cloud's recipe is chosen at, each on its own (e.g. 4,converged); "
        "a study budget without its own choice uses the one made at converged",
    )
    tp.add_argument(
        "--kd-weights",
        default="",
        help="then KD's teacher-term weight among these (in (0, 1); 0.5 always added): kd run as the study "
        "runs it at converged, per weight and seed, scored on the edges' validation parts",
    )
    tp.add_argument("--fd-weights", default="", help="the same for FD's distillation weight (> 0; 1.0 always added)")
    tp.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes running a stage's trials at once, each with cores/jobs torch threads "
        "(a resumed tuning needs the same count: its workflow runs check their thread count)",
    )
    tp.add_argument("--out", required=True, help="tuning folder (rerun the same command to resume)")
    tp.set_defaults(func=_cmd_tune)


def _seeds(text: str) -> list[int]:
    from ..errors import ConfigError

    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None


def _cmd_tune(args: argparse.Namespace) -> None:
    from ..study.budget import parse_budgets
    from ..study.tune import parse_lrs, run_tune
    from ..study.tune_distill import parse_weights

    seeds, lrs = tuple(_seeds(args.seeds)), parse_lrs(args.lrs)
    cloud = tuple(c.strip() for c in args.cloud.split(",") if c.strip())
    distill = {}
    for method, text in (("kd", args.kd_weights), ("fd", args.fd_weights)):
        if text.strip():
            distill[method] = parse_weights(text, f"--{method}-weights")
    budgets = tuple(b.name for b in parse_budgets(args.cloud_budgets, args.cap, args.patience))
    run_tune(
        args.out,
        args.preset,
        seeds,
        lrs,
        args.cap,
        args.patience,
        args.data_dir,
        cloud=cloud,
        distill=distill,
        cloud_budgets=budgets,
        jobs=args.jobs,
    )
    print((Path(args.out) / "tune.md").read_text())
    print(f"wrote {Path(args.out) / 'tune.json'}; use it with `baim study --tuned` or `baim run --tuned`")


def _cmd_study(args: argparse.Namespace) -> None:
    from ..study import parse_budgets, run_study

    seeds = _seeds(args.seeds)
    budgets = parse_budgets(args.budgets, args.cap, args.patience)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    result = run_study(
        args.out,
        args.preset,
        seeds,
        budgets,
        methods,
        args.data_dir,
        args.fid_extractor,
        jobs=args.jobs,
        worker=args.worker,
        tuned=args.tuned,
    )
    if args.worker:
        if result.get("failed"):
            from ..errors import WorkflowError

            raise WorkflowError(f"{len(result['failed'])} cells failed:\n" + result["failed"][0]["error"])
        return
    print((Path(args.out) / "study.md").read_text())
    print(f"wrote {Path(args.out) / 'study.json'} ({len(result['cells'])} cells, {len(result['missing'])} missing)")
    if result.get("failed"):
        from ..errors import WorkflowError

        cells = ", ".join(f"{f['method']} (seed {f['seed']}, budget {f['budget']})" for f in result["failed"])
        raise WorkflowError(f"{len(result['failed'])} cells failed: {cells}; study.json's 'failed' has the tracebacks")
