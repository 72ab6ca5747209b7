"""The cloud as a Flower ServerApp: the workflow over a Flower Grid.

Run config: ``run-dir`` (required: where ``layout.json`` is and where results go),
``seed``, ``fid-extractor``, ``edges`` (how many nodes to wait for), ``timeout`` (seconds per
exchange), ``strategies`` (comma-separated). A run directory prepared by ``baim run --engine
flower-sim`` (or an earlier ``flwr run``) keeps its own configuration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..config import STRATEGIES, RunConfig
from ..metrics import get_extractor
from ..runfiles import RunFiles
from ..workflow import Workflow, prepare
from .transport import FlowerTransport

app = ServerApp()


def run_workflow_on(
    grid: Grid, run_dir: str | Path, cfg: RunConfig, expected_edges: int | None = None, timeout: float | None = None
) -> dict:
    """The workflow over ``grid``; ``cfg`` is used only when ``run_dir`` has no config yet."""
    cfg_path = RunFiles(run_dir).config
    if cfg_path.is_file():
        cfg = RunConfig.from_dict(json.loads(cfg_path.read_text()))
    get_extractor(cfg.fid_extractor)  # a missing FID network stops the run before it starts, not after training
    rd, layout, ds, _ = prepare(run_dir, cfg)
    transport = FlowerTransport(grid, expected_edges=expected_edges or len(layout.edges))
    return Workflow(rd, layout, ds, transport, transport.ledger, cfg, timeout=timeout).run()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    run_dir = str(rc.get("run-dir") or os.environ.get("BAIM_RUN_DIR", ""))
    if not run_dir:
        raise ValueError("the ServerApp needs run config run-dir (flwr run --run-config \"run-dir='/path'\")")
    strategies = tuple(s for s in str(rc.get("strategies", ",".join(STRATEGIES))).split(",") if s)
    cfg = RunConfig(
        seed=int(rc.get("seed", 0)),
        fid_extractor=str(rc.get("fid-extractor", "domain")),
        engine=str(rc.get("engine") or os.environ.get("BAIM_ENGINE", "flower")),
        strategies=strategies,
    )
    run_workflow_on(
        grid, run_dir, cfg, expected_edges=int(rc.get("edges", 0)) or None, timeout=float(rc.get("timeout", 0)) or None
    )
