"""A BAIM's shape as plain data: which learners, which tasks, which connections, how the gates
are sized. Frozen and checked on load, because it arrives inside files from other machines
(the cloud's registry, a compact model on an edge) and everything else is rebuilt from it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import SpecError
from ..learners import LearnerSpec
from .connections import Connection


@dataclass(frozen=True)
class BAIMConfig:
    """Everything needed to rebuild a BAIM (or compact model) before its weights are loaded.

    ``learner_tasks[l]`` is learner l's task, or ``None`` for a *feeder*: a learner of another
    task kept in a compact model only because its stages feed the squad. ``trimmed`` records
    learners cut down to the stages something still reads; ``frozen`` learners keep their
    weights and normalisation statistics.

    Immutable (sequences are stored as tuples): a BAIM holds its config and replaces it when
    its structure changes, so the config never disagrees with the model.
    """

    task_names: Sequence[str]
    learner_tasks: Sequence[int | None]
    learner_specs: Sequence[LearnerSpec]
    connections: Sequence[Connection] = ()
    top_k: int = 2
    height: int = 3
    gate_hidden: int = 64
    latent_dim: int = 0  # 0: the largest learner latent
    has_tsgate: bool = True
    frozen: Sequence[int] = ()
    trimmed: Mapping[int, Mapping[str, int]] = field(default_factory=dict)
    projection_rank: int = 0  # 0: exact 1×1 projections; r > 0: a rank-r bottleneck per target stage
    prior_rank: int | None = None  # the latent priors' form: None full covariance, 0 diagonal, r diagonal + rank r

    def __post_init__(self) -> None:
        for name in ("task_names", "learner_tasks", "learner_specs", "connections"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "frozen", tuple(sorted(self.frozen)))
        object.__setattr__(self, "trimmed", {k: dict(v) for k, v in sorted(self.trimmed.items())})

    def to_dict(self) -> dict:
        return {
            "task_names": list(self.task_names),
            "learner_tasks": list(self.learner_tasks),
            "learner_specs": [s.to_dict() for s in self.learner_specs],
            "connections": [c.to_dict() for c in self.connections],
            "top_k": self.top_k,
            "height": self.height,
            "gate_hidden": self.gate_hidden,
            "latent_dim": self.latent_dim,
            "has_tsgate": self.has_tsgate,
            "frozen": sorted(self.frozen),
            "trimmed": {str(k): dict(v) for k, v in sorted(self.trimmed.items())},
        } | (
            ({"projection_rank": self.projection_rank} if self.projection_rank else {})  # absent: exact
            | ({"prior_rank": self.prior_rank} if self.prior_rank is not None else {})  # absent: full covariance
        )

    @classmethod
    def from_dict(cls, raw: dict) -> BAIMConfig:
        """Parse and check a stored config before anything is built from it; raises SpecError
        naming the field (the loader turns it into a ModelFileError naming the file)."""
        if not isinstance(raw, dict):
            raise SpecError(f"a BAIM config must be a JSON object, got {type(raw).__name__}")
        missing = sorted(set(_FIELDS) - set(raw))
        unknown = sorted(set(raw) - set(_FIELDS) - {"projection_rank", "prior_rank"})  # optional: files before them
        if missing or unknown:
            raise SpecError(f"BAIM config: missing fields {missing}, unknown fields {unknown}")
        task_names = _list(raw, "task_names", MAX_TASKS)
        if not task_names or any(not isinstance(t, str) for t in task_names) or len(set(task_names)) != len(task_names):
            raise SpecError(f"BAIM config field 'task_names': 1..{MAX_TASKS} distinct strings")
        specs = [LearnerSpec.from_dict(s) for s in _list(raw, "learner_specs", MAX_LEARNERS)]
        n = len(specs)
        tasks = _list(raw, "learner_tasks", MAX_LEARNERS)
        if len(tasks) != n or not n or any(t is not None and not _index(t, len(task_names)) for t in tasks):
            raise SpecError("BAIM config field 'learner_tasks': one task index (or null for a feeder) per learner spec")
        empty = [name for t, name in enumerate(task_names) if t not in tasks]
        if empty:
            raise SpecError(f"BAIM config: tasks {empty} have no learner")
        if len({(s.image_size, s.channels) for s in specs}) != 1:
            raise SpecError("BAIM config: all learner specs must share image size and channels")
        connections = []
        for c in _list(raw, "connections", MAX_CONNECTIONS):
            if not isinstance(c, dict) or set(c) != set(_CONNECTION_FIELDS):
                raise SpecError(f"BAIM config: a connection needs exactly {list(_CONNECTION_FIELDS)}, got {c!r:.200}")
            src, dst = c["src"], c["dst"]
            if c["side"] not in ("enc", "dec") or not _index(src, n) or not _index(dst, n) or src == dst:
                raise SpecError(f"BAIM config: connection {c!r:.200} names no pair of distinct learners/sides")
            i, j = c["src_stage"], c["dst_stage"]
            if not _index(i, specs[src].num_stages) or not _index(j, specs[dst].num_stages) or j < i:
                raise SpecError(f"BAIM config: connection {c!r:.200} names stages its learners lack (or j < i)")
            connections.append(Connection(**c))
        if len(set(connections)) != len(connections):
            raise SpecError("BAIM config: a connection is listed twice")
        ints = {k: raw[k] for k in ("top_k", "height", "gate_hidden", "latent_dim")}
        if (
            not all(_is_int(v) for v in ints.values())
            or not 1 <= ints["top_k"] <= MAX_LEARNERS
            or not 0 <= ints["height"] <= 64
            or not 1 <= ints["gate_hidden"] <= 4096
            or not 0 <= ints["latent_dim"] <= 4096
        ):
            raise SpecError(
                f"BAIM config: {ints} must be ints with 1 ≤ top_k ≤ {MAX_LEARNERS}, 0 ≤ height ≤ 64, "
                "1 ≤ gate_hidden ≤ 4096, 0 ≤ latent_dim ≤ 4096"
            )
        if ints["latent_dim"] and ints["latent_dim"] < max(s.latent_dim for s in specs):
            raise SpecError(f"BAIM config: shared latent {ints['latent_dim']} is smaller than a learner's")
        if not isinstance(raw["has_tsgate"], bool):
            raise SpecError("BAIM config field 'has_tsgate': must be true or false")
        frozen = _list(raw, "frozen", MAX_LEARNERS)
        if any(not _index(x, n) for x in frozen) or len(set(frozen)) != len(frozen):
            raise SpecError("BAIM config field 'frozen': distinct learner indices")
        trimmed_raw = raw["trimmed"]
        if not isinstance(trimmed_raw, dict):
            raise SpecError("BAIM config field 'trimmed': an object of learner -> {side: stages kept}")
        trimmed: dict[int, dict[str, int]] = {}
        for k, v in trimmed_raw.items():
            lrn = int(k) if isinstance(k, str) and k.isdigit() and len(k) < 6 else -1
            if not _index(lrn, n) or not isinstance(v, dict) or lrn in trimmed:
                raise SpecError(f"BAIM config field 'trimmed': {k!r} is not a learner index (0..{n - 1})")
            if any(
                side not in ("enc", "dec") or not _is_int(keep) or not 0 <= keep <= specs[lrn].num_stages
                for side, keep in v.items()
            ):
                raise SpecError(f"BAIM config field 'trimmed': {v!r:.200} must map enc/dec to a stage count")
            trimmed[lrn] = dict(v)
        rank = raw.get("projection_rank", 0)
        if not _is_int(rank) or not 0 <= rank <= 4096:
            raise SpecError(f"BAIM config field 'projection_rank': an int in 0..4096 (0: exact), got {rank!r:.50}")
        prior_rank = raw.get("prior_rank")
        if prior_rank is not None and (not _is_int(prior_rank) or not 0 <= prior_rank <= 4096):
            raise SpecError(f"BAIM config field 'prior_rank': null (full) or an int in 0..4096, got {prior_rank!r:.50}")
        return cls(
            task_names,
            tasks,
            specs,
            connections,
            frozen=frozen,
            trimmed=trimmed,
            has_tsgate=raw["has_tsgate"],
            projection_rank=rank,
            prior_rank=prior_rank,
            **ints,
        )


# What a stored BAIM config may hold, and its limits (checked before anything is built).
_FIELDS = (
    "task_names",
    "learner_tasks",
    "learner_specs",
    "connections",
    "top_k",
    "height",
    "gate_hidden",
    "latent_dim",
    "has_tsgate",
    "frozen",
    "trimmed",
)
_CONNECTION_FIELDS = ("side", "src", "src_stage", "dst", "dst_stage")
MAX_TASKS, MAX_LEARNERS, MAX_CONNECTIONS = 256, 256, 100_000


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _index(v: object, n: int) -> bool:
    return _is_int(v) and 0 <= v < n  # type: ignore[operator]


def _list(raw: dict, key: str, limit: int) -> list:
    v = raw[key]
    if not isinstance(v, list) or len(v) > limit:
        raise SpecError(f"BAIM config field {key!r}: must be a list of at most {limit} entries")
    return v
