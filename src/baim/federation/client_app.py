"""The edge as a Flower ClientApp: every message goes to :class:`EdgeNode`.

An edge learns who it is from its node config: ``edge`` (or, on the simulation engine,
``partition-id``), and where its run lives from the run config ``run-dir`` (holding
``layout.json``) and optional ``data-dir``. Its own models are kept under
``<run-dir>/edges/edge-<id>`` unless the node config names a ``workdir``.
"""

from __future__ import annotations

import os
from functools import lru_cache

from flwr.app import Context
from flwr.app import Message as FlowerMessage
from flwr.clientapp import ClientApp

from ..edge import EdgeNode
from ..runview import Run
from ..transport import decode, encode
from .transport import from_record, to_record

app = ClientApp()


@lru_cache(maxsize=4)
def _node(edge: int, run_dir: str, data_dir: str, workdir: str, seed: int) -> EdgeNode:
    run = Run.open(run_dir)
    return EdgeNode(edge, run.layout, run.dataset(data_dir or None), workdir or run.files.edge(edge), seed)


def node_from_context(context: Context) -> EdgeNode:
    nc, rc = context.node_config, context.run_config
    edge = int(nc["edge"]) if "edge" in nc else int(nc["partition-id"])
    run_dir = str(nc.get("run-dir") or rc.get("run-dir") or os.environ.get("BAIM_RUN_DIR", ""))
    if not run_dir:
        raise ValueError(
            "this edge does not know its run directory: give the SuperNode "
            "--node-config \"edge=N run-dir='/path'\" (run-dir holds layout.json)"
        )
    data_dir = str(nc.get("data-dir") or rc.get("data-dir") or os.environ.get("BAIM_DATA_DIR", ""))
    return _node(edge, run_dir, data_dir, str(nc.get("workdir", "")), int(rc.get("seed", 0)))


def handle(message: FlowerMessage, context: Context) -> FlowerMessage:
    reply = node_from_context(context).handle(decode(from_record(message.content)))
    return FlowerMessage(to_record(encode(reply)), reply_to=message)


@app.query("info")
def query_info(message: FlowerMessage, context: Context) -> FlowerMessage:
    return handle(message, context)


@app.train("local")
def train_local(message: FlowerMessage, context: Context) -> FlowerMessage:
    return handle(message, context)


@app.train("deploy")
def train_deploy(message: FlowerMessage, context: Context) -> FlowerMessage:
    return handle(message, context)


@app.train("personalize")
def train_personalize(message: FlowerMessage, context: Context) -> FlowerMessage:
    return handle(message, context)


@app.evaluate()
def evaluate(message: FlowerMessage, context: Context) -> FlowerMessage:
    return handle(message, context)
