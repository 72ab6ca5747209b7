"""Which engine carries the workflow's messages: ``baim run --engine``.

- ``inprocess``: edges are :class:`~baim.edge.EdgeNode` objects in this process; messages
  still go through the codec, so byte counts are exact.
- ``flower-sim``: Flower's simulation engine; the ServerApp runs the same workflow
  (:mod:`baim.federation.server_app`), each edge is a ClientApp.

Flower's deployment engine is started with ``flwr run`` (README, "Deployment").
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import RunConfig
from .errors import ConfigError, WorkflowError
from .metrics import get_extractor
from .transport import ByteLedger, InProcessTransport
from .workflow import Workflow, edge_nodes, prepare


def run(out: str | Path, cfg: RunConfig | None = None) -> dict:
    """The whole workflow into ``out`` on the configured engine; rerun the same call to resume."""
    cfg = cfg or RunConfig()
    started = time.perf_counter()
    if cfg.engine == "flower":
        raise ConfigError(
            "the deployment engine is started with `flwr run` (see README, 'Deployment'); "
            "baim run takes --engine inprocess or flower-sim"
        )
    # The FID network is needed only at the end, but a missing one must stop the run before its
    # folder records this configuration (the corrected command would then be refused as another run).
    get_extractor(cfg.fid_extractor)
    rd, layout, ds, _ = prepare(out, cfg)
    if cfg.engine == "inprocess":
        ledger = ByteLedger()
        nodes = edge_nodes(rd, layout, ds, cfg.seed)
        summary = Workflow(rd, layout, ds, InProcessTransport(nodes, ledger), ledger, cfg).run()
    else:
        from .federation.simulation import simulate

        simulate(rd.root, len(layout.edges), cfg.data_dir)
        if not rd.done("summary"):
            raise WorkflowError(f"the Flower simulation ended before the workflow finished; see {rd.root}/state")
        summary = json.loads(rd.files.summary.read_text())
    summary["wall_seconds_this_invocation"] = round(time.perf_counter() - started, 2)
    return summary
