"""Paired differences baim − method with 95 % bootstrap intervals.

Paired on seed and layout: each seed has one layout, and every method's edge ``e`` of seed ``s``
is scored on the same test set as baim's edge ``e``. Per-edge numbers (quality) are resampled
hierarchically, seeds with replacement and then edges within each drawn seed, so the interval
reflects both how layouts differ and how edges differ; per-method totals (bytes, FLOPs) have one
number per seed and are resampled over seeds. With one seed the interval is over edges only.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000


def bootstrap(by_seed: list[np.ndarray], resamples: int = RESAMPLES, seed: int = 0) -> dict[str, float]:
    """Mean of all differences and the 2.5/97.5 percentiles of its hierarchical bootstrap;
    ``by_seed``: one array of paired differences per seed."""
    groups = [np.asarray(g, dtype=float) for g in by_seed if len(g)]
    if not groups:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    # Vectorised (a Python loop over resamples took ~70 ms per metric, seconds per study.json
    # refresh): every slot of every resample draws which seed fills it, and every group a
    # resample of its edges for every slot; a slot keeps the draw of the group it picked.
    picks = rng.integers(len(groups), size=(resamples, len(groups)))
    sums, counts = np.zeros(resamples), np.zeros(resamples)
    for j, g in enumerate(groups):
        drawn = g[rng.integers(len(g), size=(resamples, len(groups), len(g)))].sum(axis=-1)
        hit = picks == j
        sums += np.where(hit, drawn, 0.0).sum(axis=1)
        counts += hit.sum(axis=1) * len(g)
    means = sums / counts
    return {
        "mean": float(np.mean(np.concatenate(groups))),
        "ci_low": float(np.percentile(means, 2.5)),
        "ci_high": float(np.percentile(means, 97.5)),
        "n": int(sum(len(g) for g in groups)),
    }


def paired_differences(
    baim: dict[int, dict], other: dict[int, dict], per_edge: tuple[str, ...], totals: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """baim − other per metric; ``baim`` and ``other`` map seed → cell (``per_edge`` rows with
    an ``edge`` key, totals at the top). Only seeds both have are paired."""
    seeds = sorted(set(baim) & set(other))
    out = {}
    for key in per_edge:
        diffs = []
        for s in seeds:
            theirs = {r["edge"]: r[key] for r in other[s]["per_edge"]}
            diffs.append(np.array([r[key] - theirs[r["edge"]] for r in baim[s]["per_edge"] if r["edge"] in theirs]))
        out[key] = bootstrap(diffs)
    for key in totals:
        out[key] = bootstrap([np.array([float(baim[s][key]) - float(other[s][key]) for s in seeds])])
    return out
