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
MAX_DEPTH = 32  # JSON nesting of a header; baim's own messages nest at most a handful of levels


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
    raw = data[9 : 9 + n]
    if _nesting(raw) > MAX_DEPTH:  # before parsing: json's recursion would escape as RecursionError
        raise MessageError(f"message header nests deeper than {MAX_DEPTH} levels; not a baim message")
    try:
        header = json.loads(raw)
        kind, meta = header["kind"], header["meta"]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise MessageError(f"message header is not valid JSON with kind and meta: {exc}") from exc
    if not isinstance(kind, str) or not isinstance(meta, dict):
        raise MessageError("message header: kind must be a string and meta an object")
    body = data[9 + n :]
    try:
        tensors = st_load(body) if body else {}
    except (SafetensorError, Exception) as exc:  # safetensors raises several types on garbage
        raise MessageError(f"message body is not a valid safetensors blob: {exc}") from exc
    return Message(kind, meta, tensors)


def _nesting(raw: bytes) -> int:
    """The deepest bracket nesting of a JSON text, outside strings (an upper bound for garbage)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:  # the usual case, at C speed
        return 0
    depth = deepest = 0
    in_string = escaped = False
    for b in raw:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:  # quote
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif b in (0x5D, 0x7D):
            depth -= 1
    return deepest
