"""Atomic file writes: an artifact is either absent or complete, never half-written.

A killed run must be able to resume from whatever artifacts exist, which is only safe if no
artifact can exist in a truncated state. Everything baim writes goes through these helpers.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import DiskFull


def _disk_full(path: Path, tmp: str, exc: OSError, size: int | None) -> DiskFull:
    """The error a full disk becomes: where, how much was needed (or written before it ran
    out), how much is free, and the fix."""
    written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
    need = f"{size / 1e6:.1f} MB" if size is not None else f"over {written / 1e6:.1f} MB"
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return DiskFull(
        f"no space left to write {path} (it needs {need}; {free} in {path.parent}): free space there "
        f"and rerun, which resumes where this stopped ({exc.strerror})"
    )


def atomic_write(
    path: str | os.PathLike, write: Callable[[str], None], mode: int | None = None, size: int | None = None
) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    The temporary file lives in the destination folder so that the rename is atomic (same
    file system). On any error the temporary file is removed and ``path`` is untouched.
    ``mode`` (e.g. 0o600 for a private key) is set before anything is written, so a secret is
    never readable by others, not even for a moment; by default artifacts get normal permissions.
    A full disk raises :class:`~baim.errors.DiskFull` (``size``: the bytes to write, if known).
    """
    path = Path(path)
    tmp = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(path, tmp, exc, size) from exc
        raise
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask if mode is None else mode)  # mkstemp creates 0600
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        full = _disk_full(path, tmp, exc, size) if exc.errno in (errno.ENOSPC, errno.EDQUOT) else None
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full is not None:
            raise full from exc
        raise
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    def _w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, _w, mode, size=len(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
