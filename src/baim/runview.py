"""A run folder, read only: what ``baim cloud add`` / ``prune-learners`` / ``partition``, the
comparison, the service and the benchmarks need of a finished (or stopped) run, typed, so none
of them re-derives the folder's layout or a phase's record format.

The writer's side (lock, configuration check, phase records) is :class:`baim.rundir.RunDir`;
the file names of both are :class:`baim.runfiles.RunFiles`'.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar, cast, overload

from torch import nn

from .config import RunConfig
from .data import DataSet, load_dataset
from .data.layout import Layout
from .errors import DataError, WorkflowError
from .models import BAIM, load_model
from .models.io import WEIGHTS
from .rundir import JsonRecord
from .runfiles import RunFiles, source_strategy

R = TypeVar("R", bound=JsonRecord)


class Run:
    """The run in folder ``root``; :meth:`open` checks that it is one."""

    def __init__(self, root: str | Path):
        self.files = RunFiles(root)

    @classmethod
    def open(cls, root: str | Path) -> Run:
        run = cls(root)
        if not run.files.layout.is_file():
            raise DataError(
                f"{run.root} is not a run folder (it has no {run.files.layout.name}); make one with "
                f"`baim run --out {run.root}`"
            )
        return run

    @property
    def root(self) -> Path:
        return self.files.root

    @cached_property
    def layout(self) -> Layout:
        return Layout.load(self.files.layout)

    @cached_property
    def config(self) -> RunConfig | None:
        """What ``baim run`` was asked (None for a folder it did not make)."""
        path = self.files.config
        return RunConfig.from_dict(json.loads(path.read_text())) if path.is_file() else None

    def dataset(self, data_dir: str | None = None) -> DataSet:
        """The run's data set (from ``data_dir`` if given, else where the layout says)."""
        return load_dataset(self.layout.dataset, data_dir or self.layout.data_dir)

    @property
    def source_strategy(self) -> str:
        """The strategy whose BAIM was partitioned: the one its partition record names; before
        that phase, the one the workflow would choose (finetune for a folder without config)."""
        if self.done("partition"):
            return str(self.result("partition")["source_strategy"])
        return source_strategy(self.config.strategies) if self.config is not None else "finetune"

    # -- phase records ----------------------------------------------------------------------
    def done(self, phase: str) -> bool:
        return self.files.state(phase).is_file()

    def _record(self, phase: str) -> dict[str, Any]:
        path = self.files.state(phase)
        if not path.is_file():
            raise WorkflowError(f"phase {phase!r} has not finished in {self.root} (no {path})")
        return cast(dict[str, Any], json.loads(path.read_text()))

    @overload
    def result(self, phase: str, kind: type[R]) -> R: ...
    @overload
    def result(self, phase: str, kind: None = None) -> Any: ...

    def result(self, phase: str, kind: type[Any] | None = None) -> Any:
        """What finished phase ``phase`` recorded (as ``kind``, a
        :mod:`baim.workflow.results` record, if given)."""
        stored = self._record(phase)["result"]
        return stored if kind is None else kind.from_json(stored)

    def seconds(self, phase: str) -> float:
        """The wall seconds finished phase ``phase`` took."""
        return float(self._record(phase)["seconds"])

    def summary(self) -> dict[str, Any]:
        if not self.files.summary.is_file():
            raise WorkflowError(f"{self.root} holds no finished run (no {self.files.summary}); rerun to resume it")
        return cast(dict[str, Any], json.loads(self.files.summary.read_text()))

    def learner_edges(self, strategy: str) -> list[int] | None:
        """The edge each learner of the ``strategy`` BAIM came from (its cloud phase's record), if known."""
        try:
            edges = self.result(f"cloud_{strategy}")["learner_edges"]
        except (WorkflowError, OSError, ValueError, KeyError, TypeError):
            return None
        return edges if isinstance(edges, list) else None

    # -- models -----------------------------------------------------------------------------
    def baim(self, strategy: str | None = None, version: int = 0) -> BAIM:
        """The ``strategy`` BAIM (default: the partitioned one), after ``version`` integrations."""
        folder = self.files.baim(strategy or self.source_strategy, version)
        return cast(BAIM, load_model(folder, "baim"))

    def compact(self, task: str, version: int = 0) -> BAIM:
        return cast(BAIM, load_model(self.files.compact(task, version), "compact"))

    def edge_model(self, edge: int, which: str) -> nn.Module:
        """One of an edge's models (:data:`baim.runfiles.EDGE_MODELS`)."""
        return load_model(self.files.edge(edge, which), "learner" if which == "initial" else "compact")

    def uploads(self) -> dict[int, bytes]:
        """Every stored upload message, by edge."""
        return {e: f.read_bytes() for e, f in self.files.uploads().items()}

    def cloud_storage_bytes(self, strategy: str = "finetune") -> int:
        """What the cloud keeps of the run: the uploads, the ``strategy`` BAIM's weights and the
        compact models' weights."""

        def size(folder: Path, pattern: str) -> int:
            return sum(f.stat().st_size for f in folder.glob(pattern) if f.is_file())

        return (
            size(self.files.uploads_dir, "**/*")
            + size(self.files.baim(strategy), WEIGHTS)
            + size(self.files.compact_dir(), f"*/{WEIGHTS}")
        )
