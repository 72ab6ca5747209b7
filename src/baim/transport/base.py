"""The transport the workflow is written against: send a message to an edge, get its reply
within a timeout, and count every byte.

The workflow never knows which engine runs it; it only sees :class:`Transport`. An edge that
does not answer in time (crashed, slow, disconnected) yields ``None`` and is reported; the
workflow carries on without it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol

from .codec import Message, decode, encode


class Transport(Protocol):
    def edges(self) -> list[int]: ...

    def request(self, edge: int, msg: Message, timeout: float, phase: str) -> Message | None: ...


class ByteLedger:
    """Bytes per phase and direction, from the serialized messages themselves."""

    def __init__(self) -> None:
        self.bytes: dict[str, dict[str, int]] = defaultdict(lambda: {"down": 0, "up": 0})
        self.messages: list[dict] = []

    def record(self, phase: str, direction: str, edge: int, kind: str, n: int) -> None:
        self.bytes[phase][direction] += n
        self.messages.append({"phase": phase, "direction": direction, "edge": edge, "kind": kind, "bytes": n})

    def totals(self) -> dict[str, int]:
        return {"up": sum(v["up"] for v in self.bytes.values()), "down": sum(v["down"] for v in self.bytes.values())}

    def to_dict(self) -> dict:
        return {"per_phase": dict(self.bytes), **self.totals()}


class InProcessTransport:
    """Edges are objects in this process; messages still go through the codec."""

    def __init__(self, nodes: dict, ledger: ByteLedger | None = None):
        self.nodes = nodes  # edge id -> object with .handle(Message) -> Message
        self.ledger = ledger or ByteLedger()
        self.unreachable: set[int] = set()  # for tests: edges that never answer

    def edges(self) -> list[int]:
        return sorted(self.nodes)

    def request(self, edge: int, msg: Message, timeout: float, phase: str) -> Message | None:
        data = encode(msg)
        self.ledger.record(phase, "down", edge, msg.kind, len(data))
        if edge in self.unreachable:
            return None
        reply = encode(self.nodes[edge].handle(decode(data)))
        self.ledger.record(phase, "up", edge, msg.kind, len(reply))
        return decode(reply)
