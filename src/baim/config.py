"""Every setting of a run: optimisation recipes, the preset's shape, the run config (the named
presets themselves are in :mod:`baim.presets`).

A :class:`Recipe` is how one model is optimised (edge training, cloud training,
personalisation all use one). A :class:`Preset` is a whole run's shape: the federation
layout, the three recipes, the BAIM's structure and the evaluation size. The preset is
stored in full in the layout, so an edge never looks a preset up by name: what it was told
is what it runs. ``quick`` fits the whole workflow on 2 CPU cores in minutes; ``paper``
follows the paper's Fig. 5(b) (N = 10, K = 2, h = 3, pruning every 10 epochs at 0.1, training
data in 11 equal parts, full test split); its epoch counts are this project's choice, since
the paper gives none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import ConfigError

STRATEGIES = ("finetune", "freeze", "scratch")
SCHEDULES = ("sync", "async")
LIFECYCLE_DEFAULTS: dict[str, Any] = {"schedule": "sync", "staleness": 0, "leave": (), "join_late": ()}
ENGINES = ("inprocess", "flower-sim", "flower")  # "flower", the deployment engine, starts with `flwr run`
DATASETS = ("fashion-mnist", "celeba", "image-folder")
EXTRACTORS = ("domain", "lite0", "inception")


@dataclass(frozen=True)
class Recipe:
    """How one model is optimised: Adam at ``lr``, × ``lr_decay`` after every epoch, on
    MSE + ``kld_weight``·KL, gradients clipped at ``grad_clip``."""

    epochs: int
    batch_size: int = 64
    lr: float = 0.005
    lr_decay: float = 0.95
    kld_weight: float = 0.00025
    grad_clip: float = 10.0
    seed: int = 0
    # Only where a model starts from trained weights (a BAIM fused from uploads, a deployed
    # compact model): those weights and the gates that choose among them train at
    # ``trained_lr_scale`` × lr, their BatchNorm statistics stay as trained when
    # ``keep_norm_stats``, and the rate ramps up linearly over ``warmup_steps``.
    trained_lr_scale: float = 1.0
    keep_norm_stats: bool = False
    warmup_steps: int = 0
    # 0: train exactly ``epochs``. n > 0: ``epochs`` is a cap; stop once n epochs in a row did
    # not improve the validation loss and keep the best epoch's weights (needs validation data).
    patience: int = 0

    def lr_at(self, epoch: int, step: int = 0) -> float:
        """The learning rate of epoch ``epoch`` (0-based) at global ``step``: the one schedule
        every loop uses (exponential decay per epoch, optional linear warm-up)."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return self.lr * self.lr_decay**epoch * warm

    def with_seed(self, seed: int) -> Recipe:
        return replace(self, seed=seed)

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0 or not 0 < self.lr_decay <= 1:
            raise ConfigError(f"invalid recipe {self}: epochs ≥ 0, batch size ≥ 1, lr > 0, 0 < decay ≤ 1")
        if not 0 < self.trained_lr_scale <= 1 or self.warmup_steps < 0 or self.patience < 0:
            raise ConfigError(f"invalid recipe {self}: 0 < trained_lr_scale ≤ 1, warmup_steps ≥ 0, patience ≥ 0")


@dataclass(frozen=True)
class Preset:
    name: str
    # federation layout
    num_edges: int
    samples_per_edge: int | None  # None: the training split in num_edges + 1 equal parts
    cloud_samples: int | None  # None: same size as one edge's part
    test_per_task: int | None  # None: the full official test split
    alpha: float  # Dirichlet concentration of each edge's class mix (smaller = more skewed)
    tiers: tuple[str, ...]
    # recipes (the paper's: Adam 0.005, × 0.95 per epoch, β = 0.00025)
    edge: Recipe
    cloud: Recipe
    personalize: Recipe
    # BAIM structure and connection pruning
    top_k: int = 2
    height: int = 3
    prune_interval: int = 10
    prune_ratio: float = 0.1
    prune_anneal: bool = False  # True: a pruned connection's α is annealed to 0 over one interval, then removed
    gate_init_from_screening: bool = True  # LSGates start preferring each squad's best-screened upload
    cross_task_connections: bool = True  # False: candidate connections only within a squad
    connections: bool = True  # False: a BAIM without projection connections (the ablation's baseline)
    projection_rank: int = 0  # P: 0 the exact 1×1 projection; r > 0 a rank-r bottleneck per target stage
    max_sources: int = 0  # > 0: each learner's stages read from at most this many others (candidates ∝ N, not N²)
    # evaluation
    fid_count: int = 500  # generated (and real) images per FID
    # False: the cloud does not score the BAIM itself (per task, at step 0 and after training:
    # test loss, IWAE, FID by three procedures), as in a study, which scores only the models
    # edges serve; the run report then leaves out the BAIM's own tables and samples
    cloud_evaluation: bool = True
    # test images per task for the per-epoch test curves (None: all; 0: no curves, as in a
    # study, where they are reporting nobody reads and ~9 % of an edge's epoch)
    curve_test_per_task: int | None = None
    # network: seconds an edge may take to answer one request before it is reported missing
    timeout_s: float = 3600.0
    # few-shot tasks: task name -> how many of its cloud common images the cloud keeps (the
    # rest are dropped, not handed to edges); measures what the other tasks' learners add
    few_shot: dict[str, int] = field(default_factory=dict)
    # share of every edge slice and of the cloud's common data held out as validation (every
    # choice is made there; test data only reports); stratified by class
    val_fraction: float = 0.1
    # what each edge may download, by its own upload: a factor ("1.25"), megabytes ("3MB"), or
    # "none" (no limit: the lossless compact model of its task)
    download_budget: str = "1.25"
    # who makes the last choice of the model an edge serves. "cloud": the cloud sends the best
    # candidate on the edge's validation images that is no worse than its upload (so an edge
    # whose upload wins gets it back). "edge": the cloud sends the best candidate other than the
    # upload, the edge personalises it and keeps it only if it then beats its upload on its
    # validation images, else serves its upload. Why: an edge's upload, trained on its own mix,
    # often wins the comparison before personalisation, which would fit the others to that mix too.
    delivery_choice: str = "cloud"
    # the edges' learning rate by tier, where it differs from ``edge.lr`` (``baim tune`` chooses
    # it on validation data); every method that trains a tier's model from scratch uses it
    tier_lr: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parse_download_budget(self.download_budget)
        if self.delivery_choice not in DELIVERY_CHOICES:
            raise ConfigError(f"delivery_choice is one of {', '.join(DELIVERY_CHOICES)}, got {self.delivery_choice!r}")
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, int | float):
            raise ConfigError(f"val_fraction is a number in [0, 0.5], got {self.val_fraction!r}")
        if not 0 <= self.val_fraction <= 0.5:
            raise ConfigError(
                f"val_fraction {self.val_fraction} is outside 0 to 0.5; choose a share there (default 0.1)"
            )
        if not isinstance(self.few_shot, dict) or any(
            not isinstance(k, str) or not _is_count(v) for k, v in self.few_shot.items()
        ):
            raise ConfigError(f"few_shot maps task names to image counts ≥ {MIN_FEW_SHOT}, got {self.few_shot!r}")
        object.__setattr__(self, "few_shot", dict(self.few_shot))  # a copy: the preset stays frozen
        if not isinstance(self.tier_lr, dict) or any(
            not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1
            for k, v in self.tier_lr.items()
        ):
            raise ConfigError(f"tier_lr maps tier names to learning rates in (0, 1), got {self.tier_lr!r}")
        if unknown := sorted(set(self.tier_lr) - set(self.tiers)):
            raise ConfigError(f"tier_lr names tiers {unknown} this preset does not use; it has {list(self.tiers)}")
        object.__setattr__(self, "tier_lr", {k: float(v) for k, v in self.tier_lr.items()})
        if not isinstance(self.cross_task_connections, bool):
            raise ConfigError(f"cross_task_connections is true or false, got {self.cross_task_connections!r}")
        if not isinstance(self.cloud_evaluation, bool):
            raise ConfigError(f"cloud_evaluation is true or false, got {self.cloud_evaluation!r}")
        if not isinstance(self.connections, bool):
            raise ConfigError(f"connections is true or false, got {self.connections!r}")
        if not isinstance(self.max_sources, int) or isinstance(self.max_sources, bool) or self.max_sources < 0:
            raise ConfigError(f"max_sources is an int ≥ 0 (0: every other learner), got {self.max_sources!r}")
        rank = self.projection_rank
        if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank <= 4096:
            raise ConfigError(
                f"projection_rank is an int in 0..4096 (0: exact projections), got {self.projection_rank!r}"
            )

    def curve_ids(self, ids: list[int]) -> list[int] | None:
        """The test ids of a task's per-epoch test curve (``curve_test_per_task`` of ``ids``);
        None when curves are off, so a training logs no test loss."""
        if self.curve_test_per_task == 0:
            return None
        return ids[: self.curve_test_per_task or None]

    def edge_recipe(self, tier: str | None = None) -> Recipe:
        """The edges' recipe for a model of ``tier``: ``edge`` at the tier's own rate where
        ``tier_lr`` names one (a tuned rate), else ``edge`` itself."""
        return replace(self.edge, lr=self.tier_lr[tier]) if tier in self.tier_lr else self.edge

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (a saved and reloaded preset compares equal)."""
        d = asdict(self)
        d["tiers"] = list(self.tiers)
        return d

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Preset:
        try:
            kw = dict(raw)
            for key in ("edge", "cloud", "personalize"):
                kw[key] = Recipe(**kw[key])
            kw["tiers"] = tuple(kw["tiers"])
            return cls(**kw)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"a stored preset is malformed ({exc}); recreate the layout with `baim layout`") from exc

    def with_overrides(self, **kw: Any) -> Preset:
        """A copy with the given top-level fields replaced (``None`` values are ignored); a
        recipe (``edge``, ``cloud``, ``personalize``) given as a dict replaces only the fields
        it names, so a run config's JSON can say ``{"edge": {"epochs": 40, "patience": 3}}``."""
        out = {k: v for k, v in kw.items() if v is not None}
        for k in ("edge", "cloud", "personalize"):
            if isinstance(out.get(k), dict):
                try:
                    out[k] = replace(getattr(self, k), **out[k])
                except TypeError as exc:
                    raise ConfigError(
                        f"override of the {k} recipe: {exc}; recipes have {list(asdict(self.edge))}"
                    ) from exc
        return replace(self, **out)


DELIVERY_CHOICES = ("cloud", "edge")


def parse_download_budget(text: str) -> tuple[str, float] | None:
    """``--download-budget``: ``"1.25"`` → ``("factor", 1.25)`` (× the edge's own upload),
    ``"3MB"`` → ``("bytes", 3e6)``, ``"none"`` → ``None`` (the lossless compact model)."""
    raw = str(text).strip().lower()
    if raw == "none":
        return None
    kind, number = ("bytes", raw[:-2]) if raw.endswith("mb") else ("factor", raw)
    try:
        value = float(number)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(
            f"a download budget is a positive factor of the edge's upload (1.25), megabytes (3MB) or none, got {text!r}"
        )
    return (kind, value * 1e6) if kind == "bytes" else (kind, value)


# Screening measures each upload against the spread of its task's common images (zero for one
# image), and a task's latent prior is fitted to the codes of its common images: two at least.
MIN_FEW_SHOT = 2


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= MIN_FEW_SHOT


def parse_few_shot(texts: str | list[str]) -> dict[str, int]:
    """``baim run --few-shot``: ``"tops=10"``, ``"tops=10,footwear=50"`` or a list of those
    (the option repeated) → ``{"tops": 10, "footwear": 50}``. Task names are checked against
    the data set when the layout is made."""
    items = [texts] if isinstance(texts, str) else list(texts)
    out: dict[str, int] = {}
    for part in (p.strip() for text in items for p in text.split(",")):
        if not part:
            continue
        name, eq, count = (s.strip() for s in part.partition("="))
        try:
            n = int(count)
        except ValueError:
            n = 0
        if not eq or not name or n < MIN_FEW_SHOT:
            raise ConfigError(
                f"--few-shot takes TASK=N with N ≥ {MIN_FEW_SHOT} cloud images, e.g. tops=10 (got {part!r})"
            )
        if out.get(name, n) != n:
            raise ConfigError(f"--few-shot names task {name!r} twice with different counts ({out[name]} and {n})")
        out[name] = n
    return out


def run_overrides(few_shot: list[str] | None = None, cross_task_connections: bool = True) -> dict[str, Any]:
    """The preset overrides of ``baim run --few-shot … --no-cross-task-connections``; only
    settings that differ from the preset's defaults, so a plain run's config stays as it was."""
    out: dict[str, Any] = {}
    if few_shot and (parsed := parse_few_shot(few_shot)):
        out["few_shot"] = parsed
    if not cross_task_connections:
        out["cross_task_connections"] = False
    return out


def default_extractor(dataset: str) -> str:
    """The FID feature network that fits the data: the committed Fashion-MNIST classifier only
    for Fashion-MNIST; ImageNet's EfficientNet-Lite0 for anything else (or a classifier the user
    trains for their data with ``baim domain train``)."""
    return "domain" if dataset == "fashion-mnist" else "lite0"


@dataclass(frozen=True)
class RunConfig:
    """What ``baim run`` was asked to do; stored as ``config.json`` in the run directory, and a
    rerun with a different one is refused (one folder, one run)."""

    preset: str = "quick"
    seed: int = 0
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    fid_extractor: str = "domain"
    engine: str = "inprocess"
    strategies: tuple[str, ...] = STRATEGIES
    cloud_recipe: str = "gentle"
    overrides: dict[str, Any] = field(default_factory=dict)
    # the lifecycle (baim.schedule): when uploads are fused, who leaves and joins
    schedule: str = "sync"  # "async": fuse at the first quorum, integrate later uploads continually
    staleness: int = 0  # BAIM versions an edge's deployed model may lag before it is redeployed
    leave: tuple[int, ...] = ()  # edges that leave right after uploading (their learners stay)
    join_late: tuple[int, ...] = ()  # edges that join after the first deployment (async only)

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.engine, ENGINES, "engine"),
            (self.dataset, DATASETS, "data set"),
            (self.fid_extractor, EXTRACTORS, "FID extractor"),
        ):
            if value not in allowed:
                raise ConfigError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or not self.strategies:
            raise ConfigError(f"unknown strategies {bad}; choose from {', '.join(STRATEGIES)}")
        self.resolved_preset()  # a bad override stops here, before a run folder records it
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not isinstance(self.staleness, int) or self.staleness < 0:
            raise ConfigError(f"staleness is a number of BAIM versions ≥ 0, got {self.staleness!r}")
        if self.join_late and self.schedule != "async":
            raise ConfigError("edges can join after the first deployment only with --schedule async")
        n = self.resolved_preset().num_edges
        outside = sorted(e for e in (*self.leave, *self.join_late) if not isinstance(e, int) or not 0 <= e < n)
        if outside:
            raise ConfigError(f"edges {outside} named by --leave/--join-late are not in the layout (edges 0..{n - 1})")
        both = sorted(set(self.leave) & set(self.join_late))
        if both:
            raise ConfigError(f"edges {both} cannot both leave after uploading and join late")

    def resolved_preset(self) -> Preset:
        known = {f.name for f in fields(Preset)}
        unknown = sorted(set(self.overrides) - known)
        if unknown:
            raise ConfigError(f"unknown preset settings {unknown} in overrides; presets have {sorted(known)}")
        from .presets import get_preset, with_cloud_recipe  # presets are built from this module's types

        return with_cloud_recipe(get_preset(self.preset), self.cloud_recipe).with_overrides(**self.overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON; lifecycle settings only where they differ from the defaults, so the
        config of a plain run reads (and resumes) as it did before they existed."""
        d = asdict(self)
        d["strategies"] = list(self.strategies)
        for key, default in LIFECYCLE_DEFAULTS.items():
            if d[key] == default:
                del d[key]
            elif isinstance(d[key], tuple):
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"run config has unknown keys {unknown}; this baim knows {sorted(known)}")
        kw = dict(raw)
        for key in ("strategies", "leave", "join_late"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)
