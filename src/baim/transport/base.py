"""The transport the workflow is written against: send a message to an edge, get its reply
within a timeout, and count every byte.

The workflow never knows which engine runs it; it only sees :class:`Transport`. An edge that
does not answer in time (crashed, slow, disconnected) yields an ``error`` reply and is
reported; the workflow carries on without it.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import MessageError
from .codec import Message, decode, encode


class Transport(Protocol):
    def edges(self) -> list[int]: ...

    def request(self, edge: int, msg: Message, timeout: float, phase: str) -> Message:
        """The edge's reply, or an ``error`` message saying why there is none (no answer
        within ``timeout`` seconds, or the edge failed)."""
        ...


class ByteLedger:
    """Every message's size, from the serialized bytes themselves, with its phase and direction."""

    def __init__(self) -> None:
        self.messages: list[dict] = []

    def record(self, phase: str, direction: str, edge: int, kind: str, n: int) -> None:
        self.messages.append({"phase": phase, "direction": direction, "edge": edge, "kind": kind, "bytes": n})

    def totals_since(self, mark: int) -> dict[str, int]:
        """Bytes up and down over the messages recorded since ``len(messages)`` was ``mark``."""
        recent = self.messages[mark:]
        return {d: sum(m["bytes"] for m in recent if m["direction"] == d) for d in ("up", "down")}


class InProcessTransport:
    """Edges are objects in this process; messages still go through the codec. An exception
    inside an edge becomes an ``error`` reply, as on Flower, so one broken edge is reported
    missing and the run goes on."""

    def __init__(self, nodes: dict, ledger: ByteLedger | None = None):
        self.nodes = nodes  # edge id -> object with .handle(Message) -> Message
        self.ledger = ledger or ByteLedger()

    def edges(self) -> list[int]:
        return sorted(self.nodes)

    def request(self, edge: int, msg: Message, timeout: float, phase: str) -> Message:
        data = encode(msg)
        self.ledger.record(phase, "down", edge, msg.kind, len(data))
        try:
            answer = self.nodes[edge].handle(decode(data))
        except Exception as exc:  # noqa: BLE001 - any edge failure is that edge's, never the run's
            return Message("error", {"error": f"edge {edge} failed: {type(exc).__name__}: {exc}"})
        reply = encode(answer)
        self.ledger.record(phase, "up", edge, msg.kind, len(reply))
        return checked_reply(edge, reply)


def checked_reply(edge: int, data: bytes) -> Message:
    """Decode an edge's reply; bytes that are not a baim message, or a reply that names
    another edge, become an ``error`` reply (that edge is reported missing, the run goes on)."""
    try:
        reply = decode(data)
    except MessageError as exc:
        return Message("error", {"error": f"edge {edge} sent an unreadable reply: {exc}"})
    claimed = reply.meta.get("edge", edge)
    if claimed != edge:
        return Message("error", {"error": f"edge {edge} answered as edge {claimed!r}"})
    return reply
