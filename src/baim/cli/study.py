"""``baim study``: methods × budgets × seeds, resumable, with paired bootstrap intervals."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_study(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    from ..config import EXTRACTORS
    from ..presets import PRESETS
    from ..study import STUDY_METHODS

    sp = sub.add_parser(
        "study",
        formatter_class=fmt,
        help="every method at fixed and converged budgets over seeds; paired differences to baim",
    )
    sp.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="named run settings")
    sp.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (one layout each), run in this order")
    sp.add_argument("--budgets", default="4,converged", help="comma-separated: epochs (e.g. 4) or 'converged'")
    sp.add_argument("--cap", type=int, default=30, help="converged: most epochs (rounds) any training may take")
    sp.add_argument("--patience", type=int, default=3, help="converged: epochs without improvement before stopping")
    sp.add_argument("--methods", default=",".join(STUDY_METHODS), help="comma-separated; must include baim")
    sp.add_argument("--data-dir", default=None, help="folder of the data set (default: the installed one)")
    sp.add_argument("--fid-extractor", default="domain", choices=EXTRACTORS)
    sp.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes running cells at once, each with cores/jobs torch threads (about 6 GB each at quick)",
    )
    sp.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one unit of a --jobs study
    sp.add_argument("--out", required=True, help="study folder (rerun the same command to resume)")
    sp.set_defaults(func=_cmd_study)


def _cmd_study(args: argparse.Namespace) -> None:
    from ..errors import ConfigError
    from ..study import parse_budgets, run_study

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2") from None
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
