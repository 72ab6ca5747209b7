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
from typing import IO, Any, Protocol, TypeVar, overload, runtime_checkable

import torch

from .atomic import write_json
from .errors import RunConfigMismatch, RunDirBusy, WorkflowError
from .runfiles import RunFiles


@runtime_checkable
class JsonRecord(Protocol):
    """A typed phase result: what it stores (``to_json``); its class reads it back (``from_json``)."""

    def to_json(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=JsonRecord)


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
    path = RunFiles(root).lock
    key = str(path.resolve())
    held = _HELD.get(key)
    if held is not None and held.holds(path):
        return held
    lock = _Lock(path)
    _HELD[key] = lock
    return lock


class RunDir:
    """The writer's side of a run folder: the lock, the configuration check and the phase
    records. Every path in it is :class:`~baim.runfiles.RunFiles`' (``rd.files``)."""

    def __init__(self, root: str | Path, config: dict):
        self.files = RunFiles(root)
        self.root = self.files.root
        self.files.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock = lock_run_dir(self.root)  # before anything in the folder is read or written
        cfg_path = self.files.config
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
        path, threads = self.files.threads, torch.get_num_threads()
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

    def done(self, phase: str) -> bool:
        return self.files.state(phase).is_file()

    @overload
    def record(self, name: str, fn: Callable[[], R], kind: type[R]) -> R: ...
    @overload
    def record(self, name: str, fn: Callable[[], Any], kind: None = None) -> Any: ...

    def record(self, name: str, fn: Callable[[], Any], kind: type[Any] | None = None) -> Any:
        """Run phase ``name`` (``fn``) and record its result as JSON (a typed result through
        its ``to_json``), unless a previous call finished it (then ``fn`` is not called): the
        one place a killed run resumes. Returns the result either way (read back as ``kind``
        on a resume)."""
        if self.done(name):
            return self.result(name, kind)
        t0 = time.perf_counter()
        result = fn()
        stored = result.to_json() if isinstance(result, JsonRecord) else result
        write_json(
            self.files.state(name), {"phase": name, "seconds": round(time.perf_counter() - t0, 3), "result": stored}
        )
        return result

    @overload
    def result(self, name: str, kind: type[R]) -> R: ...
    @overload
    def result(self, name: str, kind: None = None) -> Any: ...

    def result(self, name: str, kind: type[Any] | None = None) -> Any:
        """The recorded result of finished phase ``name`` (as ``kind``, through its
        ``from_json``; the plain JSON without one); never runs anything."""
        marker = self.files.state(name)
        if not marker.is_file():
            raise WorkflowError(f"phase {name!r} has not finished in {self.root}: rerun `baim run` to resume it")
        stored = json.loads(marker.read_text())["result"]
        return stored if kind is None else kind.from_json(stored)

    def phase_seconds(self) -> dict[str, float]:
        return {name: json.loads(p.read_text())["seconds"] for name, p in self.files.states().items()}
