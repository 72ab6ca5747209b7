"""The ``baim`` command line. Each sub-command is a thin shell over a Python function; the
only errors it catches are :class:`baim.errors.BaimError` (the user can fix those: the message
says how), anything else is a bug and keeps its traceback.

One module per command group (``edge``, ``cloud``, ``run``, ``deploy``; ``service`` and
``compare`` register from their own packages), so a new command is a new ``add_*`` function,
not another screen of one file."""

from __future__ import annotations

import argparse

from .cloud import add_cloud
from .common import console
from .deploy import add_deploy
from .edge import add_domain, add_edge, add_evaluate, add_layout
from .run import add_run, add_sweep
from .study import add_study

EPILOG = """\
first steps (from a checkout):
  make demo   set up and run the whole quick workflow into runs/quick (open runs/quick/report.html)
  make test   set up and run the test suite
"""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

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
    for add in (add_layout, add_edge, add_evaluate, add_cloud, add_run, add_sweep, add_deploy, add_domain, add_study):
        add(sub, fmt)
    from ..service.commands import add_service_commands

    add_service_commands(sub, fmt)
    from ..compare.commands import add_compare_command

    add_compare_command(sub, fmt)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..errors import BaimError

    try:
        args.func(args)
    except BaimError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    return 0
