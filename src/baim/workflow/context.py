"""What every phase of the workflow works with: the run folder, the layout and data, the
transport to the edges, the byte ledger, the run's configuration, and one metering hook.

A phase is a function of a :class:`Context` (:mod:`baim.workflow.phases`,
:mod:`baim.workflow.lifecycle`); what one phase needs of an earlier one it reads from that
phase's typed record (``ctx.rd.result(name, Kind)``, :mod:`baim.workflow.results`), never by
running it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np

from ..atomic import atomic_write
from ..cloud import validate_upload
from ..cloud.pipeline import evaluate_tasks
from ..config import RunConfig
from ..data import DataSet
from ..data.layout import Layout
from ..edge import EdgeNode
from ..learners import StagedVAE
from ..models import BAIM, to_parts
from ..rundir import RunDir
from ..runfiles import EDGE_MODELS, source_strategy
from ..transport import ByteLedger, Message, Transport
from .results import Arrivals, Deployment, Integration, MissingEdge, Record, Screening

R = TypeVar("R", bound=Record)

Metering = Callable[[str, str], AbstractContextManager[Any]]  # (side, phase) -> what to run the work inside


def unmetered(side: str, phase: str) -> AbstractContextManager[None]:
    return nullcontext()


def save_npy(path: Path, arr: np.ndarray) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)

    atomic_write(path, _w)


def edge_nodes(rd: RunDir, layout: Layout, ds: DataSet, seed: int) -> dict[int, EdgeNode]:
    """Every edge of ``layout`` as an in-process node, working in its place in the run folder
    (``baim run --engine inprocess`` and ``baim compare`` run the edges this way)."""
    return {e.edge: EdgeNode(e.edge, layout, ds, rd.files.edge(e.edge), seed) for e in layout.edges}


def deploy_message(compact: BAIM) -> Message:
    """The message that deploys a compact model to an edge: its manifest and weights."""
    manifest, weights = to_parts(compact)
    return Message("train.deploy", manifest, weights)


def missing_edge(edge: int, reply: Message, model: str | None = None) -> MissingEdge:
    """The one shape of a missing edge in every phase's result."""
    return MissingEdge(edge, str(reply.meta.get("error", f"unexpected reply {reply.kind!r}")), model)


@dataclass(frozen=True)
class Learners:
    """Accepted learners, with each one's task (index), edge and screening loss."""

    learners: list[StagedVAE]
    tasks: list[int]
    edges: list[int]
    losses: list[float]

    def only(self, edges: Iterable[int]) -> Learners:
        """Those of ``edges``, in this order."""
        keep = set(edges)
        i = [k for k, e in enumerate(self.edges) if e in keep]
        return Learners(
            [self.learners[k] for k in i],
            [self.tasks[k] for k in i],
            [self.edges[k] for k in i],
            [self.losses[k] for k in i],
        )


def accepted_learners(uploads: dict[int, bytes], screened: Screening, layout: Layout, ds: DataSet) -> Learners:
    """The learners of the uploads ``screened`` accepted, validated again from their bytes."""
    learners, tasks = [], []
    for e in screened.accepted:
        model, meta = validate_upload(uploads[e], layout.task_names, ds.image_size, ds.channels)
        learners.append(model)
        tasks.append(layout.task_names.index(meta["task"]))
    return Learners(learners, tasks, list(screened.accepted), [screened.scores[str(e)] for e in screened.accepted])


class Context:
    """The phases' shared state, and the queries several phases ask of earlier records.

    ``meter(side, phase)`` is entered around the work of every phase on the cloud (``side``
    ``"cloud"``, the phase's name; the BAIM's evaluations as ``"evaluation"``) and around every
    request to an edge (``"edge"``, the request's phase): ``baim compare`` books CPU time and
    FLOPs through it. ``evaluated``: which of each edge's models the evaluation scores."""

    def __init__(
        self,
        rd: RunDir,
        layout: Layout,
        ds: DataSet,
        transport: Transport,
        ledger: ByteLedger,
        cfg: RunConfig,
        timeout: float | None = None,
        meter: Metering = unmetered,
        evaluated: tuple[str, ...] = EDGE_MODELS,
    ):
        self.rd, self.layout, self.ds, self.p = rd, layout, ds, layout.settings
        self.transport, self.ledger, self.cfg = transport, ledger, cfg
        self.timeout = timeout or self.p.timeout_s  # seconds an edge may take to answer one request
        self.seed, self.extractor = cfg.seed, cfg.fid_extractor
        self.meter, self.evaluated = meter, evaluated

    @overload
    def phase(self, name: str, fn: Callable[[], R], kind: type[R]) -> R: ...
    @overload
    def phase(self, name: str, fn: Callable[[], Any], kind: None = None) -> Any: ...

    def phase(self, name: str, fn: Callable[[], Any], kind: type[Any] | None = None) -> Any:
        """Phase ``name``, run (metered) and recorded unless a previous call finished it; its
        result as ``kind`` either way."""

        def metered() -> Any:
            with self.meter("cloud", name):
                return fn()

        return self.rd.record(name, metered, kind)

    def request(self, edge: int, msg: Message, phase: str) -> Message:
        """One request to an edge, its work metered as the edge's."""
        with self.meter("edge", phase):
            return self.transport.request(edge, msg, self.timeout, phase)

    def evaluate_baim(self, *args: Any, **kw: Any) -> dict:
        """How the cloud scores a BAIM (:func:`baim.cloud.pipeline.evaluate_tasks`), metered
        apart: ``baim compare`` books the evaluations apart from the training."""
        with self.meter("cloud", "evaluation"):
            return evaluate_tasks(*args, **kw)

    def present(self, k: int) -> list[int]:
        """Edges that can be deployed to once BAIM version ``k`` exists: not left, and joined."""
        batches = self.rd.result("arrivals", Arrivals).batches
        joined = {e for b in batches[: k + 1] for e in b}
        return [
            e
            for e in self.transport.edges()
            if e not in self.cfg.leave and (e not in self.cfg.join_late or e in joined)
        ]

    def baim_folder(self, version: int) -> Path:
        return self.rd.files.baim(source_strategy(self.cfg.strategies), version)

    def compact_folder(self, version: int, task: str) -> Path:
        return self.rd.files.compact(task, version)

    def deployed_versions(self, k: int) -> dict[int, int]:
        """Which BAIM version each edge holds after phase ``integration_k`` (0: the first deployment)."""
        held = {e: 0 for e in self.rd.result("deployment", Deployment).edges}
        for j in range(1, k + 1):
            held |= {e: j for e in self.rd.result(f"integration_{j}", Integration).deployed}
        return held

    def final_version(self) -> int:
        return len(self.rd.result("arrivals", Arrivals).batches) - 1

    def uploads(self) -> dict[int, bytes]:
        """Every upload the upload phase stored, by edge."""
        return {e: f.read_bytes() for e, f in self.rd.files.uploads().items()}

    def first_learners(self) -> Learners:
        """The accepted learners of the first fusion (all of them with the sync schedule)."""
        return self.accepted_learners().only(self.rd.result("arrivals", Arrivals).batches[0])

    def accepted_learners(self) -> Learners:
        """The learners screening accepted (re-validated from disk)."""
        return accepted_learners(self.uploads(), self.rd.result("screening", Screening), self.layout, self.ds)
