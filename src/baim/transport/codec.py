"""The wire format of every message between cloud and edges.

    b"BAIM" | version (1 byte) | header length (4 bytes, big endian) | JSON header | safetensors

The JSON header carries the message kind and metadata; tensors travel as a safetensors
blob (no pickle). Both engines (in-process and Flower) send exactly these bytes, so byte
counts are exact and agree between engines. Decoding checks sizes before parsing, so a
broken or hostile message is rejected before it costs memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import MessageError

MAGIC, VERSION = b"BAIM", 1
MAX_HEADER = 1 << 20  # 1 MiB of JSON
MAX_MESSAGE = 512 << 20  # 512 MiB in all


@dataclass
class Message:
    kind: str
    meta: dict = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def encode(msg: Message) -> bytes:
    header = json.dumps({"kind": msg.kind, "meta": msg.meta}, sort_keys=True).encode()
    if len(header) > MAX_HEADER:
        raise MessageError(f"message header of {len(header)} bytes exceeds {MAX_HEADER}")
    body = st_save({k: v.detach().contiguous().cpu() for k, v in msg.tensors.items()}) if msg.tensors else b""
    return MAGIC + bytes([VERSION]) + len(header).to_bytes(4, "big") + header + body


def decode(data: bytes, max_bytes: int = MAX_MESSAGE) -> Message:
    if len(data) > max_bytes:
        raise MessageError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    if len(data) < 9 or data[:4] != MAGIC:
        raise MessageError("not a baim message (bad magic)")
    if data[4] != VERSION:
        raise MessageError(f"message version {data[4]} is not supported (this baim speaks {VERSION})")
    n = int.from_bytes(data[5:9], "big")
    if n > MAX_HEADER or 9 + n > len(data):
        raise MessageError(f"message header length {n} is invalid for a {len(data)}-byte message")
    try:
        header = json.loads(data[9 : 9 + n])
        kind, meta = header["kind"], header["meta"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise MessageError(f"message header is not valid JSON with kind and meta: {exc}") from exc
    if not isinstance(kind, str) or not isinstance(meta, dict):
        raise MessageError("message header: kind must be a string and meta an object")
    body = data[9 + n :]
    try:
        tensors = st_load(body) if body else {}
    except (SafetensorError, Exception) as exc:  # safetensors raises several types on garbage
        raise MessageError(f"message body is not a valid safetensors blob: {exc}") from exc
    return Message(kind, meta, tensors)
