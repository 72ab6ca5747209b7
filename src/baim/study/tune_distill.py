"""``baim tune --kd-weights … --fd-weights …``: the distillation baselines' loss weights, chosen
on validation data.

Why: KD mixes a student's own loss with the teacher's reconstructions (``kd_weight``: the
teacher term's share) and FD adds a distillation term to each edge's loss (``distill_weight``).
Both weights were fixed (0.5 and 1.0), so the baselines kept a recipe nobody chose on data
while baim's was tuned; a baseline gets the same care as the method it is compared with.

A trial is one (method, weight, seed): the method run exactly as the study runs it at
``converged`` (the study's cap and patience, the tuned per-tier rates), on the seed's layout,
in a validation-only context (:attr:`baim.compare.common.Context.validation_only`: every model
is scored on its edge's validation part and no test image is read). A weight's score is the
mean over seeds of the mean over edges of that validation loss; the lowest wins (ties: the
current default). Each trial is a file written atomically: a killed tuning resumes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_json
from ..compare.common import Settings
from ..errors import ConfigError
from .trials import run_calls, say
from .tune import Stage

# per method, the setting its weight is held in and that setting's default (Settings' own)
_DEFAULTS = Settings(rounds=1, local_epochs=1, sl_epochs=1, central_epochs=1)
_FIELDS = {"kd": "kd_weight", "fd": "distill_weight"}
WEIGHTS: dict[str, tuple[str, float]] = {m: (f, float(getattr(_DEFAULTS, f))) for m, f in _FIELDS.items()}


def parse_weights(text: str, flag: str) -> tuple[float, ...]:
    """``"0.25,0.5,0.75"`` → the candidate weights (distinct, > 0; a KD weight also < 1)."""
    try:
        ws = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        ws = ()
    top = 1.0 if flag == "--kd-weights" else math.inf
    if not ws or any(not 0 < w < top for w in ws) or len(set(ws)) != len(ws):
        hint = "in (0, 1), e.g. 0.25,0.5,0.75" if flag == "--kd-weights" else "> 0, e.g. 0.3,1,3"
        raise ConfigError(f"{flag} {text!r}: give distinct weights {hint}")
    return tuple(sorted(ws))


def _run(name: str, ctx: Any) -> dict:
    from ..compare.methods import central, federated

    row = central.run_kd(ctx) if name == "kd" else federated.run_fd(ctx)
    return row.to_dict()


def _trial(stage: Stage, name: str, w: float, seed: int, path: Path) -> None:
    """Run ``name`` at weight ``w`` on seed ``seed``'s layout, validation only; write ``path``."""
    from ..compare.runner import make_context

    field, _ = WEIGHTS[name]
    cfg = stage.config(seed)
    settings = stage.budget().settings(cfg.resolved_preset()).with_weights({field: w})
    ctx = make_context(path.parent, cfg, settings)
    ctx.validation_only = True
    t0 = time.perf_counter()
    row = _run(name, ctx)
    trial = {
        "method": name,
        field: w,
        "seed": seed,
        "val_loss": {str(r["edge"]): r["val_loss"] for r in row["per_edge"]},
        "settings": row["settings"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(path, trial)
    stage.log(f"{name} {field} {w:g} seed {seed}: val loss {np.mean(list(trial['val_loss'].values())):.5f}")


def tune_distill(stage: Stage, candidates: dict[str, tuple[float, ...]], jobs: int = 1) -> dict[str, Any]:
    """Every missing trial under ``out/distill`` (in ``jobs`` worker processes), then per
    method each weight's mean validation loss and the chosen weight (``candidates``: method →
    weights; the default always joins)."""
    for name in candidates:
        if name not in WEIGHTS:
            raise ConfigError(f"no weight to tune for {name!r}; choose from {', '.join(WEIGHTS)}")
    grid = {name: tuple(sorted(set(ws) | {WEIGHTS[name][1]})) for name, ws in candidates.items()}
    paths = {
        (name, seed, w): stage.out / "distill" / f"seed-{seed}" / f"{name}-w{w:g}.json"
        for name, weights in grid.items()
        for seed in stage.seeds
        for w in weights
    }
    worker = stage if jobs <= 1 else replace(stage, log=say)
    missing = [(_trial, (worker, name, w, seed, path)) for (name, seed, w), path in paths.items() if not path.is_file()]
    run_calls(missing, jobs)
    result: dict[str, Any] = {}
    for name, weights in grid.items():
        field, default = WEIGHTS[name]
        scores: dict[float, list[float]] = {w: [] for w in weights}
        for seed in stage.seeds:
            for w in weights:
                trial = json.loads(paths[name, seed, w].read_text())
                scores[w].append(float(np.mean(list(trial["val_loss"].values()))))
        mean = {w: float(np.mean(v)) for w, v in scores.items()}
        chosen = min(weights, key=lambda w: (mean[w], w != default))
        result[name] = {
            "field": field,
            "default": default,
            "val_loss": {f"{w:g}": mean[w] for w in weights},
            "per_seed": {f"{w:g}": scores[w] for w in weights},
            "chosen": chosen,
            "gain_vs_default": mean[chosen] - mean[default],
        }
    result["settings"] = {v["field"]: v["chosen"] for k, v in result.items()}
    result["selection"] = (
        "lowest mean over seeds of the mean over edges of the final models' validation loss (plain VAE loss), "
        "each method run as the study runs it at converged; test data is not read"
    )
    return result


def report(result: dict[str, Any]) -> list[str]:
    """The distillation weights' lines of ``tune.md``."""
    lines = [
        "## The distillation baselines' weights (each run as the study runs it at converged)",
        "",
        "| method | setting | weight: mean edge validation loss | chosen | chosen − default |",
        "|---|---|---|---|---|",
    ]
    for name in WEIGHTS:
        if name in result:
            v = result[name]
            cells = ", ".join(f"{w}: {loss:.5f}" for w, loss in v["val_loss"].items())
            lines.append(f"| {name} | {v['field']} | {cells} | {v['chosen']:g} | {v['gain_vs_default']:+.5f} |")
    return [*lines, ""]
