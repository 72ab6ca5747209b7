"""Rich progress bars with ETA, shared by every long-running phase."""

from __future__ import annotations

import os

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def make_progress(transient: bool = False) -> Progress:
    """A progress display; silent when ``BAIM_QUIET=1`` (tests, CI logs)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        transient=transient,
        disable=os.environ.get("BAIM_QUIET") == "1",
    )
