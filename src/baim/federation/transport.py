"""The workflow's transport over a Flower Grid.

Each baim message (the same bytes the in-process engine sends, so byte counts agree) travels
as one uint8 array in an ArrayRecord named ``baim``; the Flower message type is the baim
kind (``query.info``, ``train.local``, ``train.deploy``, ``train.personalize``, ``evaluate``).
Every exchange has a timeout: an edge that does not answer in time, answers with an error,
with bytes that are not a baim message, from another node or as another edge, yields an
``error`` reply, and the workflow reports it and goes on. At discovery, an edge id that
several nodes claim is given to none of them (``refused``).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.app import Message as FlowerMessage

from ..errors import MessageError
from ..transport import ByteLedger, Message, checked_reply, decode, encode

RECORD = "baim"


def to_record(data: bytes) -> RecordDict:
    return RecordDict({RECORD: ArrayRecord({"payload": Array(np.frombuffer(data, dtype=np.uint8).copy())})})


def from_record(content: RecordDict) -> bytes:
    return content.array_records[RECORD]["payload"].numpy().tobytes()


class FlowerTransport:
    def __init__(
        self,
        grid,
        ledger: ByteLedger | None = None,
        discovery_timeout: float = 120.0,
        expected_edges: int | None = None,
    ):
        self.grid = grid
        self.ledger = ledger or ByteLedger()
        self.node_of: dict[int, int] = {}  # baim edge id -> Flower node id
        self.refused: list[dict] = []  # nodes not taken as edges at discovery, and why
        self._discover(discovery_timeout, expected_edges)

    def _discover(self, timeout: float, expected: int | None) -> None:
        """Ask every connected node which edge it is (``query.info``)."""
        import time

        deadline = time.monotonic() + timeout
        nodes: list[int] = []
        while time.monotonic() < deadline:
            nodes = list(self.grid.get_node_ids())
            if expected is None or len(nodes) >= expected:
                break
            time.sleep(1.0)
        data = encode(Message("query.info"))
        msgs = [FlowerMessage(to_record(data), dst_node_id=n, message_type="query.info") for n in nodes]
        claims: dict[int, list[int]] = {}
        for reply in self.grid.send_and_receive(msgs, timeout=max(1.0, deadline - time.monotonic())):
            if reply.has_error():
                continue
            try:
                edge = decode(from_record(reply.content)).meta["edge"]
            except (MessageError, KeyError, TypeError) as exc:
                self.refused.append({"node": reply.metadata.src_node_id, "reason": f"unreadable info reply: {exc}"})
                continue
            if not isinstance(edge, int) or isinstance(edge, bool):
                self.refused.append({"node": reply.metadata.src_node_id, "reason": f"edge id {edge!r} is not an int"})
                continue
            claims.setdefault(edge, []).append(reply.metadata.src_node_id)
        for edge, nodes_ in claims.items():
            if len(nodes_) == 1:
                self.node_of[edge] = nodes_[0]
            else:  # two nodes say they are one edge: neither can be told from an impostor
                self.refused.append({"edge": edge, "nodes": nodes_, "reason": "several nodes claim this edge"})

    def edges(self) -> list[int]:
        return sorted(self.node_of)

    def request(self, edge: int, msg: Message, timeout: float, phase: str) -> Message:
        data = encode(msg)
        self.ledger.record(phase, "down", edge, msg.kind, len(data))
        out = FlowerMessage(to_record(data), dst_node_id=self.node_of[edge], message_type=msg.kind)
        replies = list(self.grid.send_and_receive([out], timeout=timeout))
        if not replies:
            return Message("error", {"error": f"edge {edge} did not answer within {timeout:.0f} s"})
        if replies[0].has_error():
            return Message("error", {"error": f"edge {edge} failed: {replies[0].error.reason}"})
        if replies[0].metadata.src_node_id != self.node_of[edge]:
            return Message("error", {"error": f"edge {edge}: a reply came from node {replies[0].metadata.src_node_id}"})
        reply = from_record(replies[0].content)
        self.ledger.record(phase, "up", edge, msg.kind, len(reply))
        return checked_reply(edge, reply)
