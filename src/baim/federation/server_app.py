"""The cloud as a Flower ServerApp: phases 2-6 of the workflow over a Flower Grid.

Run config: ``run-dir`` (required: where ``layout.json`` is and where results go),
``seed``, ``fid-extractor``, ``engine`` (a label for the summary), ``edges`` (how many
nodes to wait for), ``timeout`` (seconds per exchange), ``strategies`` (comma-separated).
"""

from __future__ import annotations

import os

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..cloud.fusion import STRATEGIES

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from ..run import run_workflow_on

    rc = context.run_config
    run_dir = str(rc.get("run-dir") or os.environ.get("BAIM_RUN_DIR", ""))
    if not run_dir:
        raise ValueError("the ServerApp needs run config run-dir (flwr run --run-config \"run-dir='/path'\")")
    strategies = tuple(s for s in str(rc.get("strategies", ",".join(STRATEGIES))).split(",") if s)
    run_workflow_on(grid, run_dir, engine=str(rc.get("engine") or os.environ.get("BAIM_ENGINE", "flower")),
                    expected_edges=int(rc.get("edges", 0)) or None, timeout=float(rc.get("timeout", 0)) or None,
                    strategies=strategies)
