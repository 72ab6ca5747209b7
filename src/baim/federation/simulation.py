"""``baim run --engine flower-sim``: the same workflow on Flower's simulation engine.

The simulation engine gives apps an empty run config, so the run directory reaches the
ServerApp and the ClientApps through the environment (``BAIM_RUN_DIR``, ``BAIM_DATA_DIR``),
which Ray's worker processes inherit. Each virtual SuperNode is one edge
(``partition-id`` = edge id).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def simulate(run_dir: str | Path, num_edges: int, data_dir: str | None = None) -> None:
    from flwr.simulation import run_simulation

    from .client_app import app as client_app
    from .server_app import app as server_app

    os.environ["BAIM_RUN_DIR"] = str(Path(run_dir).resolve())
    if data_dir:
        os.environ["BAIM_DATA_DIR"] = str(data_dir)
    os.environ["BAIM_ENGINE"] = "flower-sim"
    # The workflow talks to one edge at a time, so each virtual node gets every core: its
    # torch then runs with as many threads as the in-process engine's, which keeps the two
    # engines' results, and so their messages, identical.
    cores = max(1, os.cpu_count() or 1)
    backend: dict[str, dict[str, Any]] = {
        "client_resources": {"num_cpus": cores, "num_gpus": 0.0},
        "init_args": {"num_cpus": cores, "include_dashboard": False},
    }
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_edges, backend_config=backend)
