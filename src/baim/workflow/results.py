"""What each phase of the workflow returns: a frozen record per phase, with the JSON it is
stored as in the run folder (``state/<phase>.json``).

The JSON is the record's fields in declaration order, so the files stay exactly what the
phases wrote when they returned plain dicts: an older run folder still resumes, and
``summary.json`` is unchanged. A reader asks for the record it expects
(``rd.result("upload", Upload)``) and reads attributes, not string keys. Parts whose shape
belongs to another module (a learner's metrics, a training curve, an edge's reply) stay JSON
objects inside the record.
"""

from __future__ import annotations

import types
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from ..errors import WorkflowError

R = TypeVar("R", bound="Record")


def _to_json(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _from_json(hint: Any, value: Any) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_json(value)
    if origin in (Union, types.UnionType) and value is not None:
        (inner,) = [a for a in args if a is not type(None)]
        return _from_json(inner, value)
    if origin is tuple and isinstance(value, list):
        return tuple(_from_json(args[0], v) for v in value)
    if origin is dict and isinstance(value, dict):
        return {k: _from_json(args[1], v) for k, v in value.items()}
    return value


def _at_default(f: Field[Any], value: Any) -> bool:
    """A field a later version added, left at its default: not written, so a record without it
    is stored exactly as the version before wrote it."""
    if f.default is not MISSING:
        return bool(value == f.default)
    return f.default_factory is not MISSING and bool(value == f.default_factory())


def _mismatch(cls: type, data: Any, names: list[str]) -> WorkflowError:
    got = sorted(data) if isinstance(data, dict) else type(data).__name__
    return WorkflowError(
        f"a stored {cls.__name__} record has fields {got}, expected {names}: the run folder was written by "
        "another version of baim or edited; rerun into a fresh --out folder"
    )


@dataclass(frozen=True)
class Record:
    """A phase's result (or a part of one): ``to_json`` gives what the run folder stores,
    ``from_json`` reads it back, checking that every field without a default is there (a field
    with a default is one a later version added: older run folders lack it)."""

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: _to_json(getattr(self, f.name)) for f in fields(self) if not _at_default(f, getattr(self, f.name))
        }

    @classmethod
    def from_json(cls: type[R], data: Any) -> R:
        names = [f.name for f in fields(cls)]
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        if not isinstance(data, dict) or not required <= set(data) <= set(names):
            raise _mismatch(cls, data, names)
        hints = get_type_hints(cls)
        return cls(**{n: _from_json(hints[n], data[n]) for n in names if n in data})


@dataclass(frozen=True)
class Bytes(Record):
    """Bytes a phase moved: ``up`` (edges → cloud) and ``down``."""

    up: int
    down: int


@dataclass(frozen=True)
class MissingEdge(Record):
    """An edge a phase could not use, and why (``model``: which of its models, in the evaluation)."""

    edge: int
    reason: str
    model: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"edge": self.edge, "reason": self.reason}
        return out if self.model is None else out | {"model": self.model}

    @classmethod
    def from_json(cls, data: Any) -> MissingEdge:
        if not isinstance(data, dict) or not {"edge", "reason"} <= set(data) <= {"edge", "reason", "model"}:
            raise _mismatch(cls, data, ["edge", "reason", "model (optional)"])
        return cls(data["edge"], data["reason"], data.get("model"))


@dataclass(frozen=True)
class LayoutResult(Record):
    """Phase ``layout``: how many edges and cloud images the layout made, and the fingerprint
    of the inputs it was made from (:mod:`baim.resume`: a resume on changed inputs is refused)."""

    edges: int
    cloud: int
    inputs: dict[str, Any] | None = None


@dataclass(frozen=True)
class EdgeAuth(Record):
    public_key: str
    nonce: str
    key_from: str | None = None  # how the cloud believes the key (baim.cloud.door.enrol)


@dataclass(frozen=True)
class UploadAuth(Record):
    """What screening checks each upload's signature against: the round's run id, and each
    edge's pinned key and nonce (by edge, as a string)."""

    run: str
    edges: dict[str, EdgeAuth]


@dataclass(frozen=True)
class UploadedEdge(Record):
    edge: int
    task: str
    samples: int
    tier: str | None
    metrics: dict[str, Any] | None


@dataclass(frozen=True)
class Upload(Record):
    """Phase ``upload``: who uploaded, who did not, the bytes, and the signature checks' inputs."""

    edges: tuple[UploadedEdge, ...]
    missing: tuple[MissingEdge, ...]
    bytes: Bytes
    auth: UploadAuth


@dataclass(frozen=True)
class Screening(Record):
    """Phase ``screening`` (:meth:`baim.cloud.screening.Screening.report`): accepted edges, the
    rejected and quarantined uploads with reasons, screening losses and features by edge."""

    accepted: tuple[int, ...]
    rejected: tuple[dict[str, Any], ...]
    quarantined: tuple[dict[str, Any], ...]
    scores: dict[str, float]
    features: dict[str, Any]
    seconds: float
    identity: dict[str, str] = field(default_factory=dict)  # edge -> "signed" | "unsigned" (the door)
    waivers: dict[str, bool] = field(default_factory=dict)  # what the operator waived
    unverified: tuple[int, ...] = ()  # accepted without a signature
    unscreened: tuple[int, ...] = ()  # accepted without screening


@dataclass(frozen=True)
class Arrivals(Record):
    """Phase ``arrivals`` (:func:`baim.schedule.plan`): when each accepted upload arrives and
    which BAIM version (batch) it joins."""

    schedule: str
    tier_gflops: dict[str, Any]
    training_flops_per_image: dict[str, Any]
    finish_s: dict[str, float]
    batches: tuple[tuple[int, ...], ...]
    join_late: tuple[int, ...]


@dataclass(frozen=True)
class CloudTraining(Record):
    """Phase ``cloud_<strategy>`` (:func:`baim.cloud.pipeline.train_strategy`) and the edge
    each learner came from."""

    SUMMARY: ClassVar[tuple[str, ...]] = (
        "final_test_loss",
        "curve",
        "per_task",
        "connections",
        "candidates",
        "parameters",
        "tsgate_accuracy",
        "step0",
        "recipe",
    )

    strategy: str
    candidates: int
    connections: int
    parameters: int
    curve: tuple[dict[str, Any], ...]
    final_test_loss: float | None  # None: the BAIM was not scored (``cloud_evaluation`` off)
    per_task: dict[str, dict[str, Any]]
    step0: dict[str, dict[str, Any]]
    recipe: dict[str, Any]
    tsgate_accuracy: Any
    learner_edges: tuple[int, ...]

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` shows of this training, in its order."""
        return {k: _to_json(getattr(self, k)) for k in self.SUMMARY}


@dataclass(frozen=True)
class CompactTask(Record):
    parameters: int
    learners: int
    connections: int
    bytes: int
    max_abs_diff: float


@dataclass(frozen=True)
class Partition(Record):
    """Phase ``partition``: the compact model of each task and how far it is from the BAIM."""

    source_strategy: str
    baim_parameters: int
    tasks: dict[str, CompactTask]
    max_abs_diff: float

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` shows of the partition, in its order."""
        return {
            "max_abs_diff": self.max_abs_diff,
            "source_strategy": self.source_strategy,
            "baim_parameters": self.baim_parameters,
            "tasks": _to_json(self.tasks),
        }


@dataclass(frozen=True)
class Deployment(Record):
    """Phase ``deployment``: the edges that took their model, and what each was sent and why
    (:meth:`baim.cloud.delivery.Delivery.record`, by edge as a string)."""

    edges: tuple[int, ...]
    missing: tuple[MissingEdge, ...]
    bytes: Bytes
    deliveries: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Personalization(Record):
    """Phase ``personalization``: each personalised edge's training log (by edge, as a string),
    and under ``delivery_choice = "edge"`` what each edge kept (its personalised model or its
    upload) with both validation losses."""

    edges: dict[str, Any]
    missing: tuple[MissingEdge, ...]
    kept: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Integration(Record):
    """Phase ``integration_<k>``: BAIM version ``k`` by continual learning, and its redeployment."""

    SUMMARY: ClassVar[tuple[str, ...]] = (
        "version",
        "edge",
        "task",
        "deployed",
        "lag_before",
        "compact_bytes",
        "missing",
    )
    CONTINUAL: ClassVar[tuple[str, ...]] = (
        "untouched_tasks",
        "untouched_max_abs_diff",
        "test_loss_before",
        "test_loss_after",
        "parameters_before",
        "parameters_after",
        "trained_parameters",
    )

    version: int
    edge: int
    task: str
    deployed: tuple[int, ...]
    lag_before: dict[str, int]
    missing: tuple[MissingEdge, ...]
    cloud_seconds: float
    edge_seconds: float
    bytes: Bytes
    continual: dict[str, Any]
    log: tuple[dict[str, Any], ...]
    compact_bytes: int
    # what each redeployed edge was sent and why (as ``Deployment.deliveries``); absent in
    # records made when integrations sent the lossless compact model to everyone
    deliveries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What the lifecycle summary shows of this integration, in its order; per redeployed
        edge, the candidate it was sent and its bytes against its budget."""
        keep = ("candidate", "bytes", "budget_bytes", "within_budget")
        sent = {e: {k: d[k] for k in keep} for e, d in self.deliveries.items()}
        return (
            {k: _to_json(getattr(self, k)) for k in self.SUMMARY}
            | {k: self.continual[k] for k in self.CONTINUAL}
            | ({"delivered": sent} if sent else {})
        )


@dataclass(frozen=True)
class FinalBaim(Record):
    """Phase ``final_baim``: the last BAIM version, evaluated as the first one was."""

    version: int
    parameters: int
    per_task: dict[str, dict[str, Any]]
    final_test_loss: float | None  # None: not scored (``cloud_evaluation`` off)


@dataclass(frozen=True)
class EdgeEvaluation(Record):
    """Phase ``edge_evaluation``: each edge's reply for each of its models it was asked to score."""

    edges: tuple[dict[str, Any], ...]
    missing: tuple[MissingEdge, ...]
    bytes: Bytes
