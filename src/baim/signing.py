"""Ed25519 identities: who published a model, who sent an upload.

One small wrapper over ``cryptography`` so every signer in baim (the cloud registry signing the
compact models it publishes, an edge signing its upload) stores keys the same way and verifies
the same way. Private keys are PKCS#8 PEM files written atomically with mode 0600; public keys
travel as 32 raw bytes (hex in JSON). ``canonical`` fixes the bytes a JSON document is signed
as, so a signature does not depend on key order or whitespace.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .atomic import write_bytes, write_json
from .errors import BaimError

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class SigningError(BaimError):
    """A key file that cannot be read, or a public key or signature of the wrong form."""


def canonical(obj: Any) -> bytes:
    """The bytes a JSON document is signed as: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: str | Path) -> Path:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return write_bytes(path, pem, mode=0o600)  # 0600 before the key is written, never after


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not a readable Ed25519 private key (PEM, unencrypted): {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: holds a {type(key).__name__}, baim signs with Ed25519 keys")
    return key


def load_or_create_key(path: str | Path) -> Ed25519PrivateKey:
    """The key at ``path``, created on first use (an identity that survives restarts)."""
    if Path(path).is_file():
        return load_private_key(path)
    key = new_key()
    save_private_key(key, path)
    return key


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s signature of ``data``; False, never an
    exception, for any malformed key or signature (they come from the network)."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def public_from_hex(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise SigningError(f"public key {text[:20]!r}… is not hex: {exc}") from exc
    if len(raw) != PUBLIC_KEY_BYTES:
        raise SigningError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, got {len(raw)}")
    return raw


def sign_document(key: Ed25519PrivateKey, doc: dict[str, Any], field: str = "signature") -> dict[str, Any]:
    """``doc`` with ``field`` set to the hex signature of the rest of it (canonical JSON)."""
    body = {k: v for k, v in doc.items() if k != field}
    return body | {field: sign(key, canonical(body)).hex()}


def verify_document(public_key: bytes, doc: dict[str, Any], field: str = "signature") -> bool:
    """Whether ``doc[field]`` is ``public_key``'s signature of the rest of ``doc``; False for a
    missing or malformed signature."""
    sig = doc.get(field)
    if not isinstance(sig, str):
        return False
    try:
        raw = bytes.fromhex(sig)
    except ValueError:
        return False
    return verify(public_key, canonical({k: v for k, v in doc.items() if k != field}), raw)


def read_edge_keys(path: str | Path) -> dict[int, str]:
    """The edge keys an operator registered (``{"EDGE": "hex public key"}``, as ``baim deploy
    credentials`` writes ``edge_keys.json``): the only keys the cloud believes an edge by."""
    try:
        raw = json.loads(Path(path).read_text())
        if not isinstance(raw, dict):
            raise TypeError("it must hold one JSON object")
        keys = {int(e): str(k) for e, k in raw.items()}
    except (OSError, ValueError, TypeError) as exc:
        raise SigningError(
            f"{path}: not an edge keys file ({exc}); it maps each edge number to its hex Ed25519 public key, "
            'e.g. {"0": "ab12…"} (`baim deploy credentials` writes one)'
        ) from exc
    for edge, key in keys.items():
        try:
            public_from_hex(key)
        except SigningError as exc:
            raise SigningError(f"{path}: edge {edge}'s key: {exc}") from exc
    return keys


def write_edge_keys(path: str | Path, keys: dict[int, str]) -> Path:
    return write_json(path, {str(e): k for e, k in sorted(keys.items())})
