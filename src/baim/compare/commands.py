"""The ``baim compare`` command (registered by :mod:`baim.cli` through one hook)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_compare_command(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    from ..config import EXTRACTORS
    from ..presets import PRESETS
    from .runner import METHODS

    sp = sub.add_parser(
        "compare",
        formatter_class=fmt,
        help="measure baim against local, central, KD, FedAvg, federated distillation and split learning",
    )
    sp.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="named run settings")
    sp.add_argument("--seed", type=int, default=0, help="seed of layout, training and sampling")
    sp.add_argument("--data-dir", default=None, help="folder of the data set (default: the installed one)")
    sp.add_argument("--fid-extractor", default="domain", choices=EXTRACTORS)
    sp.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from " + ", ".join(METHODS))
    sp.add_argument("--rounds", type=int, default=None, help="FedAvg/FD rounds (default: the edges' epoch budget)")
    sp.add_argument("--local-epochs", type=int, default=None, help="FedAvg/FD local epochs per round (default 1)")
    sp.add_argument(
        "--scale-check-edges",
        type=int,
        default=0,
        help="also run baim on the smoke preset with 3 edges and with this many (≥ 50 in the issue) and check "
        "the extrapolation at that point (0: skip)",
    )
    sp.add_argument("--out", required=True, help="comparison folder (rerun to resume: finished methods are kept)")
    sp.set_defaults(func=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from ..config import RunConfig
    from .runner import compare, default_settings, scale_check

    cfg = RunConfig(preset=args.preset, seed=args.seed, data_dir=args.data_dir, fid_extractor=args.fid_extractor)
    settings = default_settings(cfg)
    if args.rounds:
        settings = replace(settings, rounds=args.rounds)
    if args.local_epochs:
        settings = replace(settings, local_epochs=args.local_epochs)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    result = compare(args.out, cfg, methods, settings)
    if args.scale_check_edges:
        result = scale_check(Path(args.out), args.scale_check_edges, args.seed, args.data_dir, args.fid_extractor)
    print((Path(args.out) / "compare.md").read_text())
    print(f"wrote {Path(args.out) / 'compare.json'} ({len(result['methods'])} methods)")
