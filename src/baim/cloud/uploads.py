"""Reading uploads from disk for ``baim cloud train``: upload messages (``*.msg``, as the
workflow stores them) or folders saved by ``baim edge train`` (``manifest.json`` +
``weights.safetensors`` + ``metrics.json``), which are wrapped into the same message so that
both go through the same screening (which validates everything; nothing here is trusted).

Attribution (:func:`authenticate`, called by :mod:`baim.cloud.door` for every learner): each
edge signs its upload with its own Ed25519 key (:mod:`baim.signing`), whose public half the
operator registered (:func:`baim.signing.read_edge_keys`). The signed header names the edge,
the run and the one-time nonce of the ``train.local`` request it answers, and the sha256 of its
weights; the cloud refuses an unsigned upload, a signature that does not verify with the
registered key of the edge it came from, an upload naming another edge, one signed for another
run or request (a replay), and one whose weights are not the ones signed. Uploads read from
disk (``baim cloud train``, ``baim cloud add``) answer no round: their signature, edge and
weights are checked, not run and nonce; saved learner folders carry no signature and enter
only with ``--accept-unsigned``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, MessageError
from ..learners import load_weights
from ..models.io import MANIFEST, WEIGHTS
from ..signing import public_from_hex, verify_document
from ..transport import Message, encode


@dataclass(frozen=True)
class Expected:
    """What the cloud knows of an edge before its upload arrives."""

    public_key: str  # hex, the key the operator registered for the edge
    run: str | None  # the upload round the cloud opened (None: read from disk, no round)
    nonce: str | None  # sent with this edge's train.local request, once (None: no round)


def weights_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def authenticate(edge: int, msg: Message, expected: Expected | None, weights_digest: str) -> None:
    """Raise MessageError unless ``msg`` is an upload signed by ``edge``'s registered key for
    this round and request, over exactly these weights (``weights_digest``: sha256 of the
    safetensors blob of the weights as received)."""
    meta = msg.meta
    if expected is None:
        raise MessageError(f"edge {edge} is not registered with this cloud (no public key): upload refused")
    if "signature" not in meta:
        raise MessageError(f"unsigned upload from edge {edge}: every upload must carry its edge's signature")
    if meta.get("edge") != edge:
        raise MessageError(
            f"identity mismatch: the upload received from edge {edge} claims to be from edge {meta.get('edge')!r}"
        )
    if not verify_document(public_from_hex(expected.public_key), meta):
        raise MessageError(
            f"wrong signature: the upload is not signed by edge {edge}'s registered key "
            "(another edge's key, or altered after signing)"
        )
    auth = meta.get("auth")
    if not isinstance(auth, dict):
        raise MessageError(f"the upload from edge {edge} has no 'auth' header (run, nonce, weights_sha256)")
    if expected.run is not None and auth.get("run") != expected.run:
        raise MessageError(
            f"replay: the upload from edge {edge} was signed for run {auth.get('run')!r}, this is run {expected.run!r}"
        )
    if expected.nonce is not None and auth.get("nonce") != expected.nonce:
        raise MessageError(
            f"replay: the upload from edge {edge} answers request {auth.get('nonce')!r}, "
            f"not this round's request {expected.nonce!r}"
        )
    if auth.get("weights_sha256") != weights_digest:
        raise MessageError(f"the weights from edge {edge} are not the ones its signature covers")


def folder_upload(d: Path, default_edge: int = 0, task: str | None = None) -> bytes:
    """A learner folder saved by ``baim edge train`` as an (unsigned) upload message, so it goes
    through the same door as a received one; ``task``: the task it is offered for, if not the
    one its metrics name."""
    try:
        metrics = json.loads((d / "metrics.json").read_text())
        manifest = json.loads((d / MANIFEST).read_text())
        if not isinstance(metrics, dict) or not isinstance(manifest, dict):
            raise TypeError("metrics.json and manifest.json must each hold a JSON object")
        meta = {
            "edge": metrics.get("edge", default_edge),
            "task": task if task is not None else metrics["task"],
            "samples": metrics["samples"],
            "spec": manifest["config"],
            "metrics": metrics,
        }
        return encode(Message("upload", meta, load_weights(d / WEIGHTS)))
    except (OSError, KeyError, TypeError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, not UTF-8
        raise DataError(
            f"unreadable learner folder {d}: {exc} (it needs {MANIFEST}, "
            f"{WEIGHTS} and metrics.json with task and samples, as `baim edge train` writes)"
        ) from exc


def read_uploads(folder: str | Path) -> dict[int, bytes]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"uploads folder {folder} not found")
    out: dict[int, bytes] = {}
    for k, f in enumerate(sorted(folder.glob("*.msg"))):
        out[k] = f.read_bytes()
    for d in sorted(p for p in folder.iterdir() if (p / MANIFEST).is_file()):
        out[len(out)] = folder_upload(d, default_edge=len(out))
    if not out:
        raise DataError(f"{folder} holds no uploads (*.msg files or saved edge models)")
    return out
