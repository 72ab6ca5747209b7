"""The federation layout: which training images each edge holds, which form the cloud's
common data, and which test images evaluate each task.

Edges are assigned to tasks in proportion to the tasks' sizes (so that equal-sized slices
fit, as the paper's "11 equal parts" needs) and to capability tiers so that every task sees
several tiers. Each edge's slice has a fixed size and a non-IID class mix drawn from
Dirichlet(α) over its task's classes; slices, the cloud's stratified common slice and the
test sets are pairwise disjoint. The layout is saved as indices (JSON), so a run is
repeatable from the same files and seed. A few-shot task (``Preset.few_shot``) keeps only the
first N of its cloud images; everything else is as in the full-data layout of the same seed.

Validation: a share ``Preset.val_fraction`` of every edge slice and of the cloud's common data
(stratified by class) is held out as ``val`` / ``cloud_val``, where every choice is made;
``indices`` and ``cloud`` are what trains. Each edge also gets its own test set from the
official test split with its slice's class mix (``EdgeSlice.test``), beside the task-level
``test`` sets; test sets only report. A layout saved before validation existed loads with no
validation part and no per-edge test sets (``val_fraction`` 0).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_json
from ..config import MIN_FEW_SHOT, Preset
from ..errors import ConfigError
from ..names import check_task_names
from .base import DataError, DataSet

FORMAT_VERSION = 2


@dataclass
class EdgeSlice:
    edge: int
    task: int
    tier: str
    indices: list[int]  # training images (indices into the training split)
    val: list[int] = field(default_factory=list)  # held-out validation images, same split
    test: list[int] = field(default_factory=list)  # the edge's own test set (test split), its class mix


@dataclass
class Layout:
    dataset: str
    data_dir: str | None
    seed: int
    preset: dict  # the whole preset (Preset.to_dict), so edges never look one up by name
    alpha: float
    tasks: list[dict]  # {"name": str, "classes": [int]}
    edges: list[EdgeSlice]
    cloud: list[int]
    test: dict[str, list[int]]  # task name -> indices into the test split
    format: int = FORMAT_VERSION
    cloud_val: list[int] = field(default_factory=list)  # the common data's validation part

    @property
    def settings(self) -> Preset:
        """The preset this layout was made with (stored in full)."""
        return Preset.from_dict(self.preset)

    @property
    def task_names(self) -> list[str]:
        return [t["name"] for t in self.tasks]

    def save(self, path: str | Path) -> Path:
        return write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> Layout:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"layout {path} not found; create one with `baim layout --out DIR`")
        try:
            raw = json.loads(path.read_text())
            if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION:
                found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
                raise DataError(f"{path}: layout format {found!r}, this baim reads {FORMAT_VERSION}")
            raw["edges"] = [EdgeSlice(**e) for e in raw["edges"]]
            if isinstance(raw.get("preset"), dict) and "val_fraction" not in raw["preset"]:
                raw["preset"] = {**raw["preset"], "val_fraction": 0.0}  # made before validation parts
            Preset.from_dict(raw["preset"])  # fail here, naming the file, rather than on first use
            layout = cls(**raw)
            layout.check_disjoint()
        except DataError as exc:
            if str(path) in str(exc):
                raise
            raise DataError(f"{path}: {exc}") from exc
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise DataError(
                f"{path}: not a valid layout ({type(exc).__name__}: {exc}); recreate it with `baim layout`"
            ) from exc
        return layout

    def fid_sets(self, ds: DataSet, task: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The two disjoint real sets every FID of ``task`` uses: the reference and the
        real-vs-real baseline, n each (at most half the task's test set)."""
        idx = self.test[task]
        n = min(n, len(idx) // 2)
        return ds.test.load(idx[:n]), ds.test.load(idx[n : 2 * n])

    def check_disjoint(self) -> None:
        """Indices are non-negative ints, edges are numbered 0..N-1 in order and name known
        tasks, and no training-split image is in two parts (training or validation, of any
        edge or the cloud) or twice in one; task test sets are disjoint. (Test sets come from
        the other split, so they never meet training or validation images.)"""
        n_tasks = len(self.tasks)
        for pos, e in enumerate(self.edges):
            if e.edge != pos or not _is_index(e.task, n_tasks) or not isinstance(e.tier, str):
                raise DataError(f"layout: edge entry {pos} ({e.edge!r}, task {e.task!r}) is malformed")
        check_task_names([t["name"] for t in self.tasks], "layout")
        if sorted(self.test) != sorted(t["name"] for t in self.tasks):
            raise DataError(f"layout: test sets {sorted(self.test)} do not match the tasks")
        train_parts = [("cloud", self.cloud), ("cloud validation", self.cloud_val)]
        for e in self.edges:
            train_parts += [(f"edge {e.edge}", e.indices), (f"edge {e.edge} validation", e.val)]
        for name, idx in [
            *train_parts,
            *[(f"test set of {k}", v) for k, v in self.test.items()],
            *[(f"edge {e.edge} test set", e.test) for e in self.edges],
        ]:
            if not isinstance(idx, list) or any(not _is_index(i, 1 << 62) for i in idx):
                raise DataError(f"layout: {name} must list non-negative integer image indices")
        for e in self.edges:
            if len(set(e.test)) != len(e.test):
                raise DataError(f"layout: edge {e.edge} test set repeats indices")
        seen: set[int] = set()
        for name, idx in train_parts:
            s = set(idx)
            if len(s) != len(idx) or s & seen:
                raise DataError(f"layout: {name} overlaps another slice or repeats indices")
            seen |= s
        test_seen: set[int] = set()
        for name, idx in self.test.items():
            s = set(idx)
            if len(s) != len(idx) or s & test_seen:
                raise DataError(f"layout: test set of {name} overlaps another task's")
            test_seen |= s


def _is_index(v: object, n: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n


def assign_tasks(num_edges: int, task_sizes: list[int]) -> list[int]:
    """Task of each edge: quotas proportional to task size (largest remainder, ≥ 1 each),
    interleaved so that consecutive edges serve different tasks."""
    if num_edges < len(task_sizes):
        raise DataError(f"{num_edges} edges cannot cover {len(task_sizes)} tasks; use at least one per task")
    total = sum(task_sizes)
    exact = [num_edges * s / total for s in task_sizes]
    quota = [max(1, int(q)) for q in exact]
    for t in sorted(range(len(exact)), key=lambda t: quota[t] - exact[t]):
        if sum(quota) >= num_edges:
            break
        quota[t] += 1
    while sum(quota) > num_edges:
        quota[max((t for t in range(len(quota)) if quota[t] > 1), key=lambda t: quota[t] - exact[t])] -= 1
    order: list[int] = []
    used = [0] * len(quota)
    while len(order) < num_edges:
        for t in range(len(quota)):
            if used[t] < quota[t]:
                order.append(t)
                used[t] += 1
    return order


def assign_tier(index_in_task: int, task: int, tiers: tuple[str, ...]) -> str:
    """Cycle the tiers within each task, starting at a task-dependent offset, so that every
    task with two or more edges mixes tiers and every tier appears."""
    return tiers[(index_in_task + task) % len(tiers)]


def _cloud_quota(ds: DataSet, preset: Preset) -> tuple[int, dict[int, int]]:
    """Images per edge, and per class the cloud's stratified share of ``cloud_samples``."""
    classes = [c for t in ds.tasks for c in t.classes]
    counts = np.bincount(np.asarray(ds.train.labels, dtype=np.int64), minlength=max(classes) + 1)
    sizes = {c: int(counts[c]) for c in classes}
    total = sum(sizes.values())
    per_edge = preset.samples_per_edge or total // (preset.num_edges + 1)
    cloud_n = preset.cloud_samples or per_edge
    if cloud_n + per_edge * preset.num_edges > total:
        raise DataError(
            f"preset {preset.name!r} needs {cloud_n + per_edge * preset.num_edges} "
            f"training images, the data set has {total}"
        )
    return per_edge, {c: int(round(cloud_n * n / total)) for c, n in sizes.items()}


def check_few_shot(ds: DataSet, preset: Preset) -> None:
    """Raise ConfigError unless every few-shot task exists and the cloud holds at least N of its
    images (cheap: run it before a run folder records the settings)."""
    names = [t.name for t in ds.tasks]
    unknown = sorted(set(preset.few_shot) - set(names))
    if unknown:
        raise ConfigError(f"few-shot tasks {unknown} are not tasks of {ds.name}; its tasks are {', '.join(names)}")
    _, quota = _cloud_quota(ds, preset)
    for task in ds.tasks:
        total = sum(quota[c] for c in task.classes)
        n, has = preset.few_shot.get(task.name), total - _val_count(total, preset.val_fraction)
        if n is not None and not MIN_FEW_SHOT <= n <= has:
            raise ConfigError(
                f"few-shot task {task.name!r} asks for {n} cloud images; preset {preset.name!r} gives it "
                f"{has} in the cloud, so choose {MIN_FEW_SHOT} to {has}"
            )


def _val_count(n: int, fraction: float) -> int:
    return int(round(n * fraction))


def few_shot_pick(per_class: list[list[int]], n: int) -> list[int]:
    """The first images of each class (lists in the seeded order), ``n`` in all, split over the
    classes in proportion to their sizes (largest remainder, earlier class first on ties, never
    more than a class has), so the pick is a miniature of the whole: a few-shot task's common
    data, or a validation part."""
    have = [len(p) for p in per_class]
    return [i for p, t in zip(per_class, _apportion(have, n, have)) for i in p[:t]]


def _apportion(weights: list[int], n: int, caps: list[int]) -> list[int]:
    """``n`` split in proportion to ``weights`` (largest remainder, earlier first on ties), never
    more than ``caps``."""
    total = sum(weights)
    exact = [n * w / total for w in weights]
    take = [min(int(e), c) for e, c in zip(exact, caps)]
    while sum(take) < n:  # hand out the remainder, largest fractional part first
        k = max((k for k in range(len(caps)) if take[k] < caps[k]), key=lambda k: (exact[k] - take[k], -k))
        take[k] += 1
    return take


def make_layout(ds: DataSet, preset: Preset, seed: int = 0, data_dir: str | None = None) -> Layout:
    """The layout of ``preset`` on ``ds`` for ``seed``. A few-shot task (``preset.few_shot``)
    keeps only N of its cloud images; the ones it drops go nowhere, so edges and test sets are
    exactly those of the full-data layout with the same seed."""
    check_few_shot(ds, preset)
    rng = np.random.default_rng(seed)
    labels = np.asarray(ds.train.labels)
    task_classes = [c for t in ds.tasks for c in t.classes]
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in task_classes}
    per_edge, quota = _cloud_quota(ds, preset)

    # Cloud common data: stratified over every class of every task; its validation part first
    # (the same whatever a few-shot task keeps for training).
    cloud: list[int] = []
    cloud_val: list[int] = []
    for task in ds.tasks:
        per_class = [[int(i) for i in pools[c][: quota[c]]] for c in task.classes]
        for c in task.classes:
            pools[c] = pools[c][quota[c] :]
        val, per_class = _hold_out(per_class, preset.val_fraction)
        cloud_val += val
        n = preset.few_shot.get(task.name)
        cloud += few_shot_pick(per_class, n) if n is not None else [i for p in per_class for i in p]

    edges = []
    edge_tasks = assign_tasks(preset.num_edges, [sum(len(pools[c]) for c in t.classes) for t in ds.tasks])
    for e, t in enumerate(edge_tasks):
        classes = ds.tasks[t].classes
        mix = rng.dirichlet(np.full(len(classes), preset.alpha))
        want = rng.multinomial(per_edge, mix)
        got = [min(w, len(pools[c])) for w, c in zip(want, classes)]
        short = per_edge - sum(got)
        # A class ran dry: fill from the task's other classes, the fullest first.
        for k in sorted(range(len(classes)), key=lambda k: -(len(pools[classes[k]]) - got[k])):
            extra = min(short, len(pools[classes[k]]) - got[k])
            got[k] += extra
            short -= extra
        if short:
            raise DataError(f"task {ds.tasks[t].name!r} has too few images for {per_edge} per edge")
        per_class = []
        for k, c in enumerate(classes):
            per_class.append([int(i) for i in pools[c][: got[k]]])
            pools[c] = pools[c][got[k] :]
        val, train = _hold_out(per_class, preset.val_fraction)
        tier = assign_tier(edge_tasks[:e].count(t), t, preset.tiers)
        edges.append(EdgeSlice(e, t, tier, sorted(i for p in train for i in p), sorted(val)))

    test_labels = np.asarray(ds.test.labels)
    test = {}
    for task in ds.tasks:
        chosen = rng.permutation(np.flatnonzero(np.isin(test_labels, task.classes)))
        if preset.test_per_task:
            chosen = chosen[: preset.test_per_task]
        test[task.name] = sorted(int(i) for i in chosen)
    if preset.val_fraction:  # layouts made before validation parts had no per-edge test sets either
        for piece in edges:
            piece.test = edge_test_set(ds, piece, len(test[ds.tasks[piece.task].name]), rng)

    layout = Layout(
        ds.name,
        data_dir,
        seed,
        preset.to_dict(),
        preset.alpha,
        [{"name": t.name, "classes": list(t.classes)} for t in ds.tasks],
        edges,
        sorted(cloud),
        test,
        cloud_val=sorted(cloud_val),
    )
    layout.check_disjoint()
    return layout


def _hold_out(per_class: list[list[int]], fraction: float) -> tuple[list[int], list[list[int]]]:
    """The validation part (the first images of each class, in proportion) and what is left
    for training, per class."""
    val = few_shot_pick(per_class, _val_count(sum(len(p) for p in per_class), fraction))
    held = set(val)
    return val, [[i for i in p if i not in held] for p in per_class]


def edge_test_set(ds: DataSet, edge: EdgeSlice, n: int, rng: np.random.Generator) -> list[int]:
    """Up to ``n`` test-split images with the class mix of the edge's slice (training and
    validation): each class's share by largest remainder; fewer images in all when a class the
    edge leans on has too few test images, so the mix holds."""
    labels = np.asarray(ds.test.labels)
    hist = class_histogram(ds, edge.indices + edge.val)
    weights = list(hist.values())
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in hist]
    n = min([n] + [len(p) * sum(weights) // w for w, p in zip(weights, pools)])
    take = _apportion(weights, n, [len(p) for p in pools])
    return sorted(int(i) for p, t in zip(pools, take) for i in p[:t])


def class_histogram(ds: DataSet, indices: list[int]) -> dict[int, int]:
    vals, counts = np.unique(np.asarray(ds.train.labels)[indices], return_counts=True)
    return {int(v): int(c) for v, c in zip(vals, counts)}
