"""How cloud and edges talk: one codec, a transport interface, an in-process engine."""

from .base import ByteLedger, InProcessTransport, Transport, checked_reply
from .codec import Message, MessageError, decode, encode

__all__ = [
    "ByteLedger",
    "InProcessTransport",
    "Message",
    "MessageError",
    "Transport",
    "checked_reply",
    "decode",
    "encode",
]
