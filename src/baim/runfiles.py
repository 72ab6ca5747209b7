"""Every file of a run folder, named in one place.

A run folder is read by the workflow, the comparison, the service, ``baim cloud add`` /
``prune-learners`` / ``partition``, the report and the benchmarks; each used to spell its
paths itself, so a renamed folder broke whichever reader was forgotten. Here is the one
spelling (``tests/test_run_files.py`` fails when another module spells one of these names)::

    RUN/layout.json config.json threads.json .lock summary.json report.html figures/
        state/<phase>.json                      one per finished phase (baim.rundir)
        cloud/identities.json                   the edges' pinned public keys
        cloud/uploads/edge-E.msg                each edge's upload message, as received
        cloud/baim-S[-vK]                       the BAIM of strategy S (version K > 0: after K integrations)
        cloud/baim-S-pruned, baim-S-added-T     written by `baim cloud prune-learners` / `add`
        cloud/compact[-vK]/T                    task T's compact model (cut from the source BAIM)
        edges/edge-E/{initial,deployed,personalized}   an edge's own models
        images/edge-E/W_P.npy, baim-S/T_P.npy, baim-final/T_P.npy, real/T[_baseline].npy
        registry/                               the cloud registry (`baim serve cloud`)
        compare_measure.json                    what `baim compare` metered of this run

A sweep's and a comparison's folders put their summary, report and figures where a run does.
"""

from __future__ import annotations

from pathlib import Path

EDGE_MODELS = ("initial", "deployed", "personalized")  # the models an edge holds, in the order they appear


def source_strategy(strategies: tuple[str, ...] | list[str]) -> str:
    """The BAIM that is partitioned and deployed: finetune's (the paper's), if it was trained,
    else the first strategy's."""
    return "finetune" if "finetune" in strategies else strategies[0]


class RunFiles:
    """The paths of the run folder ``root`` (nothing is read or created here)."""

    __slots__ = ("root",)

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- the run as a whole ----------------------------------------------------------------
    @property
    def layout(self) -> Path:
        return self.root / "layout.json"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def threads(self) -> Path:
        return self.root / "threads.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    def figure(self, name: str) -> Path:
        return self.root / "figures" / name

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def state(self, phase: str) -> Path:
        return self.state_dir / f"{phase}.json"

    def states(self) -> dict[str, Path]:
        """Every recorded phase's file, by phase name."""
        return {p.stem: p for p in sorted(self.state_dir.glob("*.json"))}

    @property
    def compare_measure(self) -> Path:
        return self.root / "compare_measure.json"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    # -- the cloud's side -------------------------------------------------------------------
    @property
    def identities(self) -> Path:
        return self.root / "cloud" / "identities.json"

    @property
    def uploads_dir(self) -> Path:
        return self.root / "cloud" / "uploads"

    def upload(self, edge: int) -> Path:
        return self.uploads_dir / f"edge-{edge}.msg"

    def uploads(self) -> dict[int, Path]:
        """Every stored upload message, by edge (in file-name order, as screening has always read them)."""
        return {int(f.stem.split("-")[1]): f for f in sorted(self.uploads_dir.glob("edge-*.msg"))}

    def baim(self, strategy: str, version: int = 0) -> Path:
        return self.root / "cloud" / (f"baim-{strategy}" if version == 0 else f"baim-{strategy}-v{version}")

    def pruned(self, strategy: str) -> Path:
        return self.root / "cloud" / f"baim-{strategy}-pruned"

    def added(self, strategy: str, task: str) -> Path:
        return self.root / "cloud" / f"baim-{strategy}-added-{task}"

    @staticmethod
    def compact_beside(baim_folder: Path, task: str) -> Path:
        """Task ``task``'s compact model, kept beside a BAIM that `baim cloud add` wrote."""
        return baim_folder / "compact" / task

    def compact_dir(self, version: int = 0) -> Path:
        return self.root / "cloud" / ("compact" if version == 0 else f"compact-v{version}")

    def compact(self, task: str, version: int = 0) -> Path:
        return self.compact_dir(version) / task

    # -- the edges' side --------------------------------------------------------------------
    def edge(self, edge: int, which: str | None = None) -> Path:
        """Edge ``edge``'s folder, or (``which`` in :data:`EDGE_MODELS`) one of its models."""
        folder = self.root / "edges" / f"edge-{edge}"
        return folder if which is None else folder / which

    # -- the images behind every number -----------------------------------------------------
    def edge_images(self, edge: int, which: str, procedure: str) -> Path:
        return self.root / "images" / f"edge-{edge}" / f"{which}_{procedure}.npy"

    def edge_image_files(self, which: str, procedure: str) -> list[tuple[int, Path]]:
        """Every edge's stored images of model ``which`` and ``procedure``, by edge number."""
        found = (self.root / "images").glob(f"edge-*/{which}_{procedure}.npy")
        return sorted((int(p.parent.name.split("-")[1]), p) for p in found)

    def baim_images(self, label: str, task: str, procedure: str) -> Path:
        """A BAIM's images: ``label`` is its strategy, or ``final`` for the last version."""
        return self.root / "images" / f"baim-{label}" / f"{task}_{procedure}.npy"

    def real_images(self, task: str, baseline: bool = False) -> Path:
        return self.root / "images" / "real" / (f"{task}_baseline.npy" if baseline else f"{task}.npy")
