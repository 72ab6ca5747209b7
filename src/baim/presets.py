"""Named run settings. ``quick`` fits the whole workflow on 2 CPU cores in minutes; ``paper``
follows the paper's Fig. 5(b) (N = 10, K = 2, h = 3, pruning every 10 epochs at 0.1, training
data in 11 equal parts, full test split). Epoch counts are not given by the paper; the
``paper`` values here are this project's choice."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


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
    # edge training (DESIGN.md §2)
    edge_epochs: int
    batch_size: int = 64
    lr: float = 0.005
    lr_decay: float = 0.95
    kld_weight: float = 0.00025
    # evaluation
    fid_samples: int = 500
    # BAIM (DESIGN.md §3)
    top_k: int = 2
    height: int = 3
    cloud_epochs: int = 3
    cloud_batch_size: int = 64
    prune_interval: int = 10
    prune_ratio: float = 0.1
    curve_test_per_task: int | None = None  # test images per task for per-epoch curves (None: all)
    # deployment (DESIGN.md §1, phase 7)
    personalize_epochs: int = 2
    # network: seconds an edge may take to answer one request before it is excluded
    timeout_s: float = 3600.0

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **kw) -> "Preset":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


PRESETS: dict[str, Preset] = {
    # h = 0 and aggressive pruning keep the fully connected first epoch affordable on 2 cores
    "quick": Preset("quick", num_edges=6, samples_per_edge=1000, cloud_samples=1000,
                    test_per_task=1000, alpha=0.5, tiers=("small", "medium", "large"),
                    edge_epochs=4, fid_samples=500, height=0, cloud_epochs=3, cloud_batch_size=128,
                    prune_interval=1, prune_ratio=0.5, curve_test_per_task=200, personalize_epochs=2),
    # a minute-long check that everything is wired (tests, engines); its numbers mean nothing
    "smoke": Preset("smoke", num_edges=3, samples_per_edge=256, cloud_samples=192, test_per_task=64,
                    alpha=0.5, tiers=("small",), edge_epochs=6, fid_samples=16, height=0, cloud_epochs=1,
                    prune_interval=1, prune_ratio=0.5, curve_test_per_task=16, personalize_epochs=1),
    "paper": Preset("paper", num_edges=10, samples_per_edge=None, cloud_samples=None,
                    test_per_task=None, alpha=0.5, tiers=("small", "medium", "large"),
                    edge_epochs=20, fid_samples=1000, cloud_epochs=50),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
