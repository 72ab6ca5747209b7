"""A run directory that remembers which phases finished, so a killed run resumes.

Each finished phase leaves ``state/<phase>.json`` (written atomically, last) holding its
result and its wall time. Rerunning the same command skips those phases and reuses their
results. A rerun with a different configuration is refused rather than silently mixing two
runs in one folder, and so is one whose torch uses another number of threads (CPU kernels
sum in another order with another thread count, so the numbers would differ in their last
bits from the ones already stored).

One process at a time: a RunDir holds an exclusive lock (``flock`` on ``.lock``, which holds
the owner's pid) for as long as it (or another RunDir of the same folder in this process)
exists; the kernel releases it when the process dies, however it dies.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from .atomic import write_json
from .errors import RunConfigMismatch, RunDirBusy


class _Lock:
    """An exclusive flock on ``path``, released when this object is collected (or the process ends)."""

    def __init__(self, path: Path):
        self.path = path
        self.fh: IO[str] = open(path, "a+")  # noqa: SIM115 - kept open: the open file holds the lock
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            pid = self.fh.read().strip() or "unknown"
            self.fh.close()
            raise RunDirBusy(
                f"{path.parent} is in use by another baim process (pid {pid}); two runs in one folder would "
                "overwrite each other's files. Wait for it to finish (or stop it), or use another --out"
            ) from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"{os.getpid()}\n")
        self.fh.flush()

    def holds(self, path: Path) -> bool:
        """Whether this lock is still on the file at ``path`` (not on one deleted since)."""
        try:
            return os.fstat(self.fh.fileno()).st_ino == path.stat().st_ino
        except (OSError, ValueError):
            return False

    def __del__(self) -> None:
        self.fh.close()


_HELD: weakref.WeakValueDictionary[str, _Lock] = weakref.WeakValueDictionary()  # this process's locks


def lock_run_dir(root: Path) -> _Lock:
    """The lock of run directory ``root``: this process's, if it holds it already (the Flower
    simulation's ServerApp opens the folder ``baim run`` opened), else a new one."""
    path = root / ".lock"
    key = str(path.resolve())
    held = _HELD.get(key)
    if held is not None and held.holds(path):
        return held
    lock = _Lock(path)
    _HELD[key] = lock
    return lock


class RunDir:
    def __init__(self, root: str | Path, config: dict):
        self.root = Path(root)
        self.state = self.root / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self._lock = lock_run_dir(self.root)  # before anything in the folder is read or written
        cfg_path = self.root / "config.json"
        if cfg_path.is_file():
            old = json.loads(cfg_path.read_text())
            if old != config:
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                raise RunConfigMismatch(
                    f"{self.root} holds a run with a different configuration (differs in {diff}); "
                    "use another --out folder, or delete this one to start over"
                )
        else:
            write_json(cfg_path, config)
        self.config = config
        self._check_threads()

    def _check_threads(self) -> None:
        path, threads = self.root / "threads.json", torch.get_num_threads()
        if not path.is_file():
            write_json(path, {"torch_threads": threads})
            return
        recorded = json.loads(path.read_text()).get("torch_threads")
        if recorded != threads:
            raise RunConfigMismatch(
                f"{self.root} was computed with {recorded} torch threads, this process has {threads}: "
                "resuming would mix numbers computed differently. Resume with the same count, e.g. "
                f"OMP_NUM_THREADS={recorded} baim run ... (same arguments), or use another --out"
            )

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def done(self, phase: str) -> bool:
        return (self.state / f"{phase}.json").is_file()

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` unless ``name`` already finished; return its (JSON) result either way."""
        marker = self.state / f"{name}.json"
        if marker.is_file():
            return json.loads(marker.read_text())["result"]
        t0 = time.perf_counter()
        result = fn()
        write_json(marker, {"phase": name, "seconds": round(time.perf_counter() - t0, 3), "result": result})
        return result

    def phase_seconds(self) -> dict[str, float]:
        out = {}
        for p in sorted(self.state.glob("*.json")):
            out[p.stem] = json.loads(p.read_text())["seconds"]
        return out
