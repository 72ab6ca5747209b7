"""Reading uploads from disk for ``baim cloud train``: upload messages (``*.msg``, as the
workflow stores them) or folders saved by ``baim edge train`` (``manifest.json`` +
``weights.safetensors`` + ``metrics.json``), which are wrapped into the same message so that
both go through the same screening (which validates everything; nothing here is trusted)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError
from ..learners import load_weights
from ..models.io import MANIFEST, WEIGHTS
from ..transport import Message, encode


def read_uploads(folder: str | Path) -> dict[int, bytes]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"uploads folder {folder} not found")
    out: dict[int, bytes] = {}
    for k, f in enumerate(sorted(folder.glob("*.msg"))):
        out[k] = f.read_bytes()
    for d in sorted(p for p in folder.iterdir() if (p / MANIFEST).is_file()):
        k = len(out)
        try:
            metrics = json.loads((d / "metrics.json").read_text())
            meta = {
                "edge": metrics.get("edge", k),
                "task": metrics["task"],
                "samples": metrics["samples"],
                "spec": json.loads((d / MANIFEST).read_text())["config"],
                "metrics": metrics,
            }
            out[k] = encode(Message("upload", meta, load_weights(d / WEIGHTS)))
        except (OSError, KeyError, json.JSONDecodeError) as exc:
            raise DataError(
                f"unreadable upload folder {d}: {exc} (it needs {MANIFEST}, "
                f"{WEIGHTS} and metrics.json with task and samples)"
            ) from exc
    if not out:
        raise DataError(f"{folder} holds no uploads (*.msg files or saved edge models)")
    return out
