"""What every command group shares: the console, argparse value types with ranges, and the data and
FID-extractor arguments."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from rich.console import Console

console = Console()


def int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
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


def float_in(lo: float, hi: float | None = None, closed: bool = False) -> Callable[[str], float]:
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


def edge_list(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated edge indices (``1,4``)."""
    parse = int_in(0)
    return tuple(sorted({parse(part) for part in text.split(",") if part.strip()}))


Subparsers = argparse._SubParsersAction  # what add_subparsers returns


Formatter = type[argparse.HelpFormatter]


def data_args(sp: argparse.ArgumentParser) -> None:
    from ..config import DATASETS

    sp.add_argument("--dataset", default="fashion-mnist", choices=DATASETS, help="data set")
    sp.add_argument(
        "--data-dir",
        default=None,
        help="folder with the data set's files (fashion-mnist: /usr/share/datasets/fashion-mnist when not given)",
    )


def extractor_arg(sp: argparse.ArgumentParser) -> None:
    from ..config import EXTRACTORS

    sp.add_argument(
        "--fid-extractor",
        default=None,
        choices=EXTRACTORS,
        help="feature network of FID/KID; by default the one that fits the data set: domain (the committed "
        "Fashion-MNIST classifier) for fashion-mnist, lite0 (ImageNet EfficientNet-Lite0) otherwise",
    )
