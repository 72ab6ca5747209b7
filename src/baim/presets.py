"""The named presets (``quick``, ``fig5``, ``paper``, ``smoke``, ``scale``, …) and the cloud
recipe a run picks (``gentle`` or the paper's ``paper``): the values, apart from the types in
:mod:`baim.config` that give them meaning, so that changing a preset is a one-file diff."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .config import Preset, Recipe
from .errors import ConfigError

CLOUD_RECIPES = ("gentle", "paper")


def _gentle(recipe: Recipe) -> Recipe:
    """The default for models that start from trained weights: those weights (and the gates)
    at a tenth of the rate, their BatchNorm statistics kept. Measured against the paper's plain
    recipe in the README; the paper's stays selectable (``--cloud-recipe paper``)."""
    return replace(recipe, trained_lr_scale=0.1, keep_norm_stats=True)


def _preset(
    name: str, edge_epochs: int, cloud_epochs: int, personalize_epochs: int, cloud_batch: int = 64, **kw: Any
) -> Preset:
    return Preset(
        name,
        edge=Recipe(edge_epochs),
        cloud=_gentle(Recipe(cloud_epochs, batch_size=cloud_batch)),
        personalize=_gentle(Recipe(personalize_epochs)),
        **kw,
    )


def with_cloud_recipe(preset: Preset, recipe: str) -> Preset:
    """``gentle`` (the presets' default) or ``paper``: the paper's plain recipe for every model
    that starts from trained weights (same rate for everything, statistics updated, gates even)."""
    if recipe not in CLOUD_RECIPES:
        raise ConfigError(f"unknown cloud recipe {recipe!r}; choose one of {', '.join(CLOUD_RECIPES)}")
    if recipe == "gentle":
        return preset

    def plain(r: Recipe) -> Recipe:
        return replace(r, trained_lr_scale=1.0, keep_norm_stats=False, warmup_steps=0)

    return replace(
        preset, cloud=plain(preset.cloud), personalize=plain(preset.personalize), gate_init_from_screening=False
    )


PRESETS: dict[str, Preset] = {
    # h = 0 and aggressive pruning keep the fully connected first epoch affordable on 2 cores
    "quick": _preset(
        "quick",
        4,
        3,
        2,
        cloud_batch=128,
        num_edges=6,
        samples_per_edge=1000,
        cloud_samples=1000,
        test_per_task=1000,
        alpha=0.5,
        tiers=("small", "medium", "large"),
        fid_count=500,
        height=0,
        prune_interval=1,
        prune_ratio=0.5,
        curve_test_per_task=200,
        # cross-task connections measured not to pay: no better at equal steps, 2.4× a step's cost (README)
        cross_task_connections=False,
        # shared codes of rank 8: within squads 1.75× a step without connections (exact: 2.17×),
        # per step within the exact projection's interval, 43× fewer connection parameters (README)
        projection_rank=8,
    ),
    # a minute-long check that everything is wired (tests, engines); its numbers mean nothing
    "smoke": _preset(
        "smoke",
        6,
        1,
        1,
        num_edges=3,
        samples_per_edge=256,
        cloud_samples=192,
        test_per_task=64,
        alpha=0.5,
        tiers=("small",),
        fid_count=16,
        height=0,
        prune_interval=1,
        prune_ratio=0.5,
        curve_test_per_task=16,
    ),
    "paper": _preset(
        "paper",
        20,
        50,
        2,
        num_edges=10,
        samples_per_edge=None,
        cloud_samples=None,
        test_per_task=None,
        alpha=0.5,
        tiers=("small", "medium", "large"),
        fid_count=1000,
    ),
    # the paper's Fig. 5(b) shape (N = 10, K = 2, connections with pruning, 3 tasks), sized for
    # minutes per seed on 2 CPU cores, with enough cloud steps for the strategies to separate
    "fig5": _preset(
        "fig5",
        4,
        8,
        2,
        num_edges=10,
        samples_per_edge=800,
        cloud_samples=1000,
        test_per_task=1000,
        alpha=0.5,
        tiers=("small", "medium", "large"),
        fid_count=500,
        height=1,
        prune_interval=1,
        prune_ratio=0.7,  # 966 candidates: the first epoch with all of them costs more than the other seven
        curve_test_per_task=200,
    ),
    # scale measured, not extrapolated (benchmarks/scale.py): the whole workflow in process at
    # N = 10, 30, 100 edges, so small slices, small learners, one or two epochs; the candidate
    # connections still grow ∝ N², hence h = 0 and most of them pruned after the first epoch
    "scale": _preset(
        "scale",
        2,
        2,
        1,
        cloud_batch=64,  # every row runs through all N decoders while connections join them
        num_edges=10,
        samples_per_edge=200,
        cloud_samples=600,
        test_per_task=200,
        alpha=0.5,
        tiers=("small",),
        fid_count=32,
        height=0,
        prune_interval=1,
        prune_ratio=0.9,
        max_sources=4,
        curve_test_per_task=32,
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
