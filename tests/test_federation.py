"""The Flower engine: ClientApp/ServerApp logic in-process over a fake Grid, and one real
run on Flower's simulation engine whose bytes agree with the in-process engine's."""

import json

import pytest
from flwr.app import Context, RecordDict
from flwr.app import Message as FlowerMessage

from baim.config import RunConfig
from baim.engines import run
from baim.federation.client_app import app as client_app
from baim.federation.server_app import run_workflow_on
from baim.federation.transport import FlowerTransport, from_record, to_record
from baim.transport import Message, encode
from baim.workflow import prepare


class FakeGrid:
    """Routes Flower messages to the real ClientApp in this process; dead nodes never answer."""

    def __init__(self, run_dir, nodes: int):
        from flwr.supercore.task_identity import TaskIdentity

        # what Flower's runtime sets in a ServerApp process before messages can be made
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.run_dir = str(run_dir)
        self.node_ids = [1000 + i for i in range(nodes)]
        self.dead: set[int] = set()
        self.timeouts: list[float | None] = []
        self.kill_after: tuple[str, int] | None = None  # (message type, node) that dies on receipt

    def get_node_ids(self):
        return list(self.node_ids)

    def send_and_receive(self, messages, *, timeout=None):
        self.timeouts.append(timeout)
        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            if self.kill_after and self.kill_after == (m.metadata.message_type, node):
                self.dead.add(node)
            if node in self.dead:
                continue
            m.metadata.__dict__["_message_id"] = f"m{len(self.timeouts)}"
            ctx = Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": node - 1000},
                state=RecordDict(),
                run_config={"run-dir": self.run_dir},
            )
            reply = client_app(m, ctx)
            reply.metadata.__dict__["_src_node_id"] = node
            replies.append(reply)
        return replies


def test_record_round_trip():
    data = encode(Message("query.info", {"a": 1}))
    assert from_record(to_record(data)) == data


def test_transport_discovers_edges_and_reports_silent_ones(tmp_path):
    prepare(tmp_path, RunConfig(preset="smoke"))
    grid = FakeGrid(tmp_path, 3)
    grid.dead.add(1002)
    t = FlowerTransport(grid, expected_edges=3, discovery_timeout=5)
    assert t.edges() == [0, 1]  # node 1002 never said who it is
    reply = t.request(1, Message("query.info"), timeout=7.5, phase="test")
    assert reply.meta["edge"] == 1 and reply.meta["task"] == "footwear"
    assert all(x is not None for x in grid.timeouts)  # every exchange had a timeout
    grid.dead.add(1001)
    reply = t.request(1, Message("query.info"), timeout=1, phase="test")
    assert reply.kind == "error" and "did not answer within 1 s" in reply.meta["error"]


def test_client_app_rejects_unknown_action(tmp_path):
    prepare(tmp_path, RunConfig(preset="smoke"))
    grid = FakeGrid(tmp_path, 1)
    msg = FlowerMessage(to_record(encode(Message("train.local"))), dst_node_id=1000, message_type="query.nope")
    with pytest.raises(ValueError, match="nope"):
        grid.send_and_receive([msg], timeout=1)


@pytest.mark.integration
def test_server_app_workflow_over_grid_survives_a_dead_node(tmp_path):
    cfg = RunConfig(preset="smoke", strategies=("freeze",), engine="flower")
    prepare(tmp_path, cfg)
    grid = FakeGrid(tmp_path, 3)
    grid.kill_after = ("train.personalize", 1002)  # edge 2 dies while personalising
    summary = run_workflow_on(grid, tmp_path, cfg)
    assert summary["engine"] == "flower"
    assert [m["edge"] for m in summary["missing"]["personalization"]] == [2]
    # a dead edge is not asked to evaluate what it never made; the rest are reported missing
    assert [(m["edge"], m["model"]) for m in summary["missing"]["evaluation"]] == [(2, "initial"), (2, "deployed")]
    assert all(set(m) >= {"edge", "reason"} for ms in summary["missing"].values() for m in ms)
    assert {e["edge"] for e in summary["edges"]} == {0, 1, 2}
    assert "personalized" not in summary["edges"][2]["models"]
    assert summary["edges"][0]["models"]["personalized"]["fid_fitted"] > 0
    assert (tmp_path / "report.html").is_file()


@pytest.mark.integration
def test_simulation_engine_matches_in_process_bytes(tmp_path):
    sim = run(tmp_path / "sim", RunConfig(preset="smoke", engine="flower-sim", strategies=("finetune",)))
    ref = run(tmp_path / "ref", RunConfig(preset="smoke", engine="inprocess", strategies=("finetune",)))
    assert sim["engine"] == "flower-sim" and ref["engine"] == "inprocess"
    assert sim["bytes"] == ref["bytes"]  # same messages, same sizes, phase by phase
    assert [e["models"] for e in sim["edges"]] == [e["models"] for e in ref["edges"]]
    assert json.loads((tmp_path / "sim" / "summary.json").read_text())["partition"]["max_abs_diff"] <= 1e-6
