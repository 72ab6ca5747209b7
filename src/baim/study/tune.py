"""``baim tune``: the edges' learning rate per tier, chosen on validation data.

Why: every method trains its tier models with the edges' recipe, and one rate for every tier
was a choice nobody made on data (large learners ended 40–50 % worse than small ones under it
at a fixed budget). A rate chosen here, per tier, on the edges' validation parts and never on
test data, then serves every method alike (``Preset.tier_lr``; ``baim study --tuned`` and
``baim run --tuned`` read it), so no method is favoured by a rate picked for another.

A trial is one (seed, tier, rate, edge): the tier's learner, built as the workflow builds it,
trained on the edge's training part to convergence (early stopping on the edge's validation
part with the study's cap and patience, best epoch kept), scored by its best validation loss.
A tier's rate is the one with the lowest mean validation loss over the tier's edges and seeds;
``gain`` is that mean minus the default rate's (paired over the same edges), so a choice that
barely differs from the default says so. Each trial is a file written atomically once it ends:
a killed tuning resumes where it stopped.

With ``cloud`` variants (``--cloud gentle,paper,even-gates``), the cloud's recipe is chosen
next, at the chosen rates: the whole workflow (converging, finetune strategy) once per variant
and seed, scored by the mean over edges of what the per-edge delivery measured on each edge's
validation part for the model it chose to send (the BAIM's own loss on the common data's
validation part is recorded beside it). The gentle recipe and the gate bias were first chosen
on test losses; this is where they are re-decided on validation.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..atomic import write_json, write_text
from ..config import Recipe, RunConfig
from ..data import load_dataset
from ..data.layout import EdgeSlice, Layout, make_layout
from ..edge.local import build_learner
from ..edge.train import train_learner
from ..errors import ConfigError, RunConfigMismatch
from ..presets import get_preset
from ..runfiles import RunFiles
from .budget import CAP, CONVERGED, Budget, parse_budgets
from .trials import Call, run_calls, say, worker_threads

DEFAULT_LRS = (0.001, 0.002, 0.005, 0.01)
# the cloud recipes ``--cloud`` compares: name -> (RunConfig.cloud_recipe, preset overrides)
CLOUD_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "gentle": ("gentle", {}),  # the presets' default: trained weights at a tenth of the rate, gates biased
    "paper": ("paper", {}),  # the paper's plain recipe: one rate for everything, even gates
    "even-gates": ("gentle", {"gate_init_from_screening": False}),  # gentle, without the gate bias
}


def parse_lrs(text: str) -> tuple[float, ...]:
    """``"0.001,0.005"`` → the candidate rates (distinct, each in (0, 1))."""
    try:
        lrs = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        lrs = ()
    if not lrs or any(not 0 < x < 1 for x in lrs) or len(set(lrs)) != len(lrs):
        raise ConfigError(f"--lrs {text!r}: give distinct learning rates in (0, 1), e.g. 0.001,0.002,0.005,0.01")
    return tuple(sorted(lrs))


def _trial_path(out: Path, seed: int, tier: str, lr: float, edge: int) -> Path:
    return out / "trials" / f"seed-{seed}" / f"{tier}-lr{lr:g}-e{edge}.json"


def run_tune(
    out: str | Path,
    preset: str = "quick",
    seeds: tuple[int, ...] = (0,),
    lrs: tuple[float, ...] = DEFAULT_LRS,
    cap: int = CAP,
    patience: int = 3,
    data_dir: str | None = None,
    log: Any = None,
    dataset: str = "fashion-mnist",
    cloud: tuple[str, ...] = (),
    distill: dict[str, tuple[float, ...]] | None = None,
    cloud_budgets: tuple[str, ...] = (CONVERGED,),
    jobs: int = 1,
) -> dict[str, Any]:
    """Every missing trial, then ``tune.json`` and ``tune.md`` from all trials on disk.
    ``jobs``: trials of a stage in that many worker processes (:mod:`baim.study.trials`).
    ``distill``: method (``kd``, ``fd``) → candidate weights, tuned at the chosen rates
    (:mod:`baim.study.tune_distill`). ``cloud_budgets``: the study budgets the cloud's recipe
    is chosen at, each on its own (``converged``, or a number of edge epochs)."""
    out = Path(out)
    if bad := [c for c in cloud if c not in CLOUD_VARIANTS]:
        raise ConfigError(f"--cloud: unknown variants {bad}; choose from {', '.join(CLOUD_VARIANTS)}")
    p = get_preset(preset)
    if cap < 1 or patience < 1:
        raise ConfigError(f"tuning trains to convergence: give --cap ≥ 1 and --patience ≥ 1 (got {cap}, {patience})")
    if not seeds:
        raise ConfigError("give at least one seed, e.g. --seeds 0")
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: give 1 or more worker processes")
    if p.val_fraction <= 0:
        raise ConfigError(f"preset {preset} holds out no validation data (val_fraction 0); nothing to tune on")
    default = p.edge.lr
    lrs = tuple(sorted(set(lrs) | {default}))  # the default is always a candidate: a gain is against it
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    _one_rule(out, cap, patience)
    if jobs > 1:  # every process of this tuning on one thread count (a workflow run checks it on resume)
        torch.set_num_threads(worker_threads(jobs))
    ds = load_dataset(dataset, data_dir)
    paths: list[Path] = []
    calls: list[Call] = []
    for seed in seeds:
        layout = make_layout(ds, p, seed=seed, data_dir=data_dir)
        for tier in p.tiers:
            edges = [e for e in layout.edges if e.tier == tier]
            for lr in lrs:
                for e in edges:
                    path = _trial_path(out, seed, tier, lr, e.edge)
                    paths.append(path)
                    if not path.is_file():
                        spec = RateTrial(path, preset, dataset, data_dir, seed, e.edge, lr, cap, patience)
                        calls.append((_rate_trial, (spec, log if jobs <= 1 else say)))
    run_calls(calls, jobs)
    trials: list[dict[str, Any]] = [json.loads(path.read_text()) for path in paths]
    result = summarise(trials, preset, list(seeds), lrs, default, cap, patience)
    if capped := cap_warning(result):
        log(capped)
    stage = Stage(out, preset, seeds, cap, patience, result["tier_lr"], data_dir, dataset, log)
    if cloud:
        by_budget = {b: tune_cloud(stage, cloud, b, jobs) for b in cloud_budgets}
        result["cloud_by_budget"] = by_budget
        if CONVERGED in by_budget:  # where a tune.json made before budgets were named kept it
            result["cloud"] = by_budget[CONVERGED]
    if distill:
        from .tune_distill import tune_distill

        result["distill"] = tune_distill(stage, distill, jobs)
    _keep_earlier_stages(out / "tune.json", result, log)
    write_json(out / "tune.json", result)
    write_text(out / "tune.md", report(result))
    return result


def _one_rule(out: Path, cap: int, patience: int) -> None:
    """A tuning folder holds trials of one convergence rule: its trial files are named by seed,
    tier, rate, edge (or weight), not by cap, so a call with another ``--cap`` or
    ``--patience`` would resume the first call's trials as if they were its own."""
    rule = {"cap": cap, "patience": patience}
    marker, made = out / "converged.json", out / "tune.json"
    if marker.is_file():
        earlier = json.loads(marker.read_text())
    elif made.is_file():  # a folder tuned before the marker existed
        earlier = json.loads(made.read_text()).get("converged", rule)
    elif out.is_dir() and any(out.iterdir()):  # trials of an unknown rule (an unfinished tuning, before the marker)
        raise ConfigError(
            f"{out} holds a tuning's files but not the cap and patience they were made with; use another --out "
            "(or delete this one to start over)"
        )
    else:
        earlier = rule
    if earlier != rule:
        raise ConfigError(
            f"{out} holds trials made with cap {earlier.get('cap')}, patience {earlier.get('patience')}; this call "
            f"asks for cap {cap}, patience {patience}: use another --out (or the same --cap and --patience)"
        )
    if not marker.is_file():
        write_json(marker, rule)


LATER_STAGES = ("cloud", "cloud_by_budget", "distill")


def _keep_earlier_stages(path: Path, result: dict[str, Any], log: Any) -> None:
    """Stages an earlier call chose into the same folder and this one did not ask for (the
    cloud recipe, the distillation weights) are kept in ``result``, provided they were made at
    the same seeds and rates (else they would describe other trainings, and are dropped with a
    line saying so). Why: a call adding one stage must not erase the others' choices."""
    if not path.is_file():
        return
    try:
        earlier = json.loads(path.read_text())
    except ValueError:
        return
    missing = [k for k in LATER_STAGES if k in earlier and k not in result]
    if not missing:
        return
    if earlier.get("seeds") != result["seeds"] or earlier.get("tier_lr") != result["tier_lr"]:
        log(f"{path}: dropping the earlier {', '.join(missing)} choice(s), made at other seeds or rates")
        return
    for k in missing:
        result[k] = earlier[k]


@dataclass(frozen=True)
class Stage:
    """What the tuning stages after the rates share: the folder, the layouts (seeds), how a
    training converges (the study's cap and patience) and the rates already chosen."""

    out: Path
    preset: str
    seeds: tuple[int, ...]
    cap: int
    patience: int
    tier_lr: dict[str, float]
    data_dir: str | None = None
    dataset: str = "fashion-mnist"
    log: Any = print

    def budget(self, name: str = CONVERGED) -> Budget:
        """The study's budget ``name`` (``converged`` with this stage's cap and patience)."""
        (budget,) = parse_budgets(name, self.cap, self.patience)
        return budget

    def config(
        self, seed: int, overrides: dict[str, Any] | None = None, budget: str = CONVERGED, **fields: Any
    ) -> RunConfig:
        """Seed ``seed``'s run config at ``budget`` (by default converging) and the chosen rates."""
        tuned = {"tier_lr": self.tier_lr} if self.tier_lr else {}
        converging = self.budget(budget).overrides()
        return RunConfig(
            preset=self.preset,
            seed=seed,
            dataset=self.dataset,
            data_dir=self.data_dir,
            overrides=converging | (overrides or {}) | tuned,
            **fields,
        )


def tune_cloud(stage: Stage, variants: tuple[str, ...], budget: str = CONVERGED, jobs: int = 1) -> dict[str, Any]:
    """One workflow run per (variant, seed) at ``budget`` under ``out/cloud-VARIANT/seed-S``
    (converging; ``cloud-VARIANT-bB`` at a budget of B edge epochs; resumable like any run);
    the variant whose edges end with the lowest mean validation loss.

    The score is the validation loss of the model each edge *keeps* (its personalised one,
    what the study reports), not of what the delivery sent: a recipe also sets the
    personalisation, and until 2026-12-06 the score stopped before it (``paper`` then won by
    0.8 % on what was sent while its personalisation nearly doubled the edges' validation
    loss; the delivered loss is still recorded beside). Why per budget: a recipe that suits
    models trained to convergence need not suit ones trained for a few epochs. Every variant of
    a seed is scored on the same edges (those with a kept model in all of them); the others
    are listed as ``unscored``. With ``jobs`` > 1 the runs not yet finished go first, in
    that many worker processes; the loop below then resumes each finished run (cheap)."""
    from ..engines import run

    ds = load_dataset(stage.dataset, stage.data_dir)
    if jobs > 1:
        todo = [(n, s) for n in variants for s in stage.seeds if not _finished(_cloud_folder(stage, n, s, budget))]
        run_calls([(_cloud_run, (replace(stage, log=say), n, s, budget)) for n, s in todo], jobs)
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for name in variants:
        for seed in stage.seeds:
            t0 = time.perf_counter()
            folder = _cloud_folder(stage, name, seed, budget)
            try:
                summary = run(folder, _cloud_config(stage, name, seed, budget))
            except RunConfigMismatch as exc:
                raise RunConfigMismatch(
                    f"{exc}\n(baim tune: resume with the same --jobs on a machine with as many cores; --jobs N gives "
                    "every process cores/N torch threads)"
                ) from exc
            curve = summary["strategies"]["finetune"].get("curve", [])
            runs[name, seed] = {
                "kept": kept_val_losses(folder, ds, seed),
                "delivered": {
                    int(e["edge"]): e["delivery"].get("val_loss") for e in summary["edges"] if e.get("delivery")
                },
                "baim_val_loss": min((r["val_loss"] for r in curve if "val_loss" in r), default=None),
                "seconds": round(time.perf_counter() - t0, 1),
            }
    scores: dict[str, Any] = {name: {"seeds": []} for name in variants}
    for seed in stage.seeds:
        scored = sorted(set.intersection(*(set(runs[name, seed]["kept"]) for name in variants)))
        if not scored:
            raise ConfigError(
                f"cloud tuning, seed {seed}: no edge kept a model with a validation loss in every variant; "
                "the layout needs validation parts (val_fraction > 0)"
            )
        for name in variants:
            got = runs[name, seed]
            sent = [got["delivered"].get(e) for e in scored]
            scores[name]["seeds"].append(
                {
                    "seed": seed,
                    "val_loss": float(np.mean([got["kept"][e] for e in scored])),
                    "delivered_val_loss": None if None in sent else float(np.mean(sent)),
                    "edges": len(scored),
                    "unscored": sorted(set(got["kept"]) - set(scored)),
                    "baim_val_loss": got["baim_val_loss"],
                }
            )
            stage.log(
                f"cloud {name} budget {budget} seed {seed}: kept models' val loss "
                f"{scores[name]['seeds'][-1]['val_loss']:.5f} over {len(scored)} edges ({got['seconds']:.0f} s)"
            )
    for name in variants:
        scores[name]["val_loss"] = float(np.mean([s["val_loss"] for s in scores[name]["seeds"]]))
    chosen = min(variants, key=lambda v: (scores[v]["val_loss"], v != "gentle"))
    recipe_and_overrides = dict(zip(("cloud_recipe", "overrides"), CLOUD_VARIANTS[chosen]))
    criterion = "mean over seeds of the mean over edges of the validation loss of the model each edge keeps"
    return {"budget": budget, "criterion": criterion, "variants": scores, "chosen": chosen, **recipe_and_overrides}


def _cloud_folder(stage: Stage, name: str, seed: int, budget: str) -> Path:
    return stage.out / (f"cloud-{name}" + ("" if budget == CONVERGED else f"-b{budget}")) / f"seed-{seed}"


def _finished(folder: Path) -> bool:
    return RunFiles(folder).summary.is_file()


def _cloud_config(stage: Stage, name: str, seed: int, budget: str) -> RunConfig:
    recipe, extra = CLOUD_VARIANTS[name]
    return stage.config(seed, extra, budget, strategies=("finetune",), cloud_recipe=recipe)


def _cloud_run(stage: Stage, name: str, seed: int, budget: str) -> None:
    """One variant's workflow run to its end (a worker's call)."""
    from ..engines import run

    t0 = time.perf_counter()
    run(_cloud_folder(stage, name, seed, budget), _cloud_config(stage, name, seed, budget))
    stage.log(f"cloud {name} budget {budget} seed {seed}: run finished ({time.perf_counter() - t0:.0f} s)")


def kept_val_losses(folder: Path, ds: Any, seed: int) -> dict[int, float]:
    """Each edge's validation loss (plain VAE loss, seeded) of the model it keeps at the end of
    the run in ``folder`` (its personalised one); edges without one or without validation
    images are left out."""
    from ..models import BAIM, reconstruction_metrics
    from ..runview import Run

    view = Run(folder)
    layout = view.layout
    beta = layout.settings.edge.kld_weight
    out: dict[int, float] = {}
    for e in layout.edges:
        path = view.files.edge(e.edge, "personalized")
        if not path.exists() or not e.val:
            continue
        model = cast(BAIM, view.edge_model(e.edge, "personalized"))  # a compact model
        out[e.edge] = reconstruction_metrics(model, ds.train.load(e.val), 0, beta, seed=seed)["test_loss"]
    return out


@dataclass(frozen=True)
class RateTrial:
    """One rate trial, as a worker process receives it."""

    path: Path
    preset: str
    dataset: str
    data_dir: str | None
    seed: int
    edge: int
    lr: float
    cap: int
    patience: int


def _rate_trial(spec: RateTrial, log: Any) -> None:
    """Train and score one trial and write its file."""
    p = get_preset(spec.preset)
    ds = load_dataset(spec.dataset, spec.data_dir)
    layout = make_layout(ds, p, seed=spec.seed, data_dir=spec.data_dir)
    (e,) = (x for x in layout.edges if x.edge == spec.edge)
    row = _trial(ds, p.edge, layout, e, spec.lr, spec.cap, spec.patience, spec.seed)
    write_json(spec.path, row)
    what = f"seed {spec.seed} {e.tier} lr {spec.lr:g} edge {e.edge}"
    log(f"{what}: val loss {row['val_loss']:.5f} (epoch {row['best_epoch']})")


def _trial(ds: Any, edge: Recipe, layout: Layout, e: EdgeSlice, lr: float, cap: int, patience: int, seed: int) -> dict:
    """One trial: the edge's tier learner, built and seeded as the workflow builds it, trained on
    its training part at ``lr`` until its validation loss stops improving; the best epoch's loss."""
    t0 = time.perf_counter()
    model = build_learner(e.tier, ds, seed + 1000 * e.edge)
    recipe = replace(edge, lr=lr, epochs=cap, patience=patience, seed=seed + 1000 * e.edge)
    label = f"tune seed {seed} edge {e.edge} ({e.tier}) lr {lr:g}"
    hist = train_learner(model, ds.train.load(e.indices), recipe, label=label, val_images=ds.train.load(e.val))
    vals = [r["val_loss"] for r in hist.epochs]
    best = int(np.argmin(vals))
    return {
        "seed": seed,
        "tier": e.tier,
        "lr": lr,
        "edge": e.edge,
        "task": layout.task_names[e.task],
        "val_loss": float(vals[best]),
        "best_epoch": best + 1,
        "epochs": len(vals),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def at_cap(trial: dict, cap: int, patience: int) -> bool:
    """The trial was stopped by the cap before its patience ran out (its best epoch within
    ``patience`` of the cap): not known to be converged; a larger ``--cap`` would have trained
    it further, and may have found a better epoch."""
    return trial["epochs"] >= cap and trial["best_epoch"] > cap - patience


def summarise(
    trials: list[dict], preset: str, seeds: list[int], lrs: tuple[float, ...], default: float, cap: int, patience: int
) -> dict[str, Any]:
    """Per tier: each rate's mean validation loss, the chosen rate and its paired gain over the
    default rate (mean over the tier's (seed, edge) pairs, with their count)."""
    tiers: dict[str, Any] = {}
    for tier in dict.fromkeys(t["tier"] for t in trials):
        rows = [t for t in trials if t["tier"] == tier]
        by = {lr: {(t["seed"], t["edge"]): t for t in rows if t["lr"] == lr} for lr in lrs}
        pairs = sorted(set.intersection(*(set(v) for v in by.values())))
        if not pairs:
            continue
        mean = {lr: float(np.mean([by[lr][k]["val_loss"] for k in pairs])) for lr in lrs}
        chosen = min(lrs, key=lambda lr: (mean[lr], abs(math.log(lr / default))))  # ties: nearer the default
        diffs = [by[chosen][k]["val_loss"] - by[default][k]["val_loss"] for k in pairs]
        tiers[tier] = {
            "val_loss": {f"{lr:g}": mean[lr] for lr in lrs},
            "best_epoch": {f"{lr:g}": float(np.mean([by[lr][k]["best_epoch"] for k in pairs])) for lr in lrs},
            "at_cap": {f"{lr:g}": sum(at_cap(by[lr][k], cap, patience) for k in pairs) for lr in lrs},
            "chosen": chosen,
            "gain_vs_default": float(np.mean(diffs)),
            "better_on": int(sum(d < 0 for d in diffs)),
            "pairs": len(pairs),
        }
    return {
        "preset": preset,
        "seeds": seeds,
        "lrs": list(lrs),
        "default_lr": default,
        "converged": {"cap": cap, "patience": patience},
        "selection": "lowest mean best-epoch validation loss (plain VAE loss, MSE + beta KL) over the tier's edges "
        "and seeds; test data is not read",
        "tiers": tiers,
        "tier_lr": {t: v["chosen"] for t, v in tiers.items() if v["chosen"] != default},
        "trials": trials,
    }


def report(result: dict[str, Any]) -> str:
    lrs = [f"{lr:g}" for lr in result["lrs"]]
    lines = [
        f"# baim tune: preset {result['preset']}, seeds {result['seeds']}",
        "",
        f"Each tier's learner trained on each of its edges' training parts to convergence (cap "
        f"{result['converged']['cap']}, patience {result['converged']['patience']}); mean best validation loss. "
        f"Default rate {result['default_lr']:g}. Test data is not read.",
        "",
        "| tier | " + " | ".join(f"lr {x}" for x in lrs) + " | chosen | chosen − default (pairs better) |",
        "|---|" + "---|" * len(lrs) + "---|---|",
    ]
    for tier, v in result["tiers"].items():
        cells = [f"{v['val_loss'][x]:.5f} ({v['best_epoch'][x]:.0f} ep)" for x in lrs]
        gain = f"{v['gain_vs_default']:+.5f} ({v['better_on']}/{v['pairs']})"
        lines.append(f"| {tier} | " + " | ".join(cells) + f" | {v['chosen']:g} | {gain} |")
    chosen = result["tier_lr"]
    lines += [
        "",
        f"tier_lr: {json.dumps(chosen)}" if chosen else "tier_lr: {} (the default rate wins for every tier)",
        "",
    ]
    if capped := cap_warning(result):
        lines += [capped, ""]
    for budget, cloud in (result.get("cloud_by_budget") or {CONVERGED: result.get("cloud")}).items():
        if cloud is None:
            continue
        lines += [
            f"## The cloud's recipe at budget {budget} (whole workflow, at the chosen rates)",
            "",
            "| variant | kept models' validation loss (mean over edges, seeds) | per seed | what the delivery sent, "
            "per seed | BAIM common-validation loss |",
            "|---|---|---|---|---|",
        ]

        for name, v in cloud["variants"].items():
            if "val_loss" not in v:  # scored before the kept model was: what was sent only
                lines.append(f"| {name} | – | – | {_per_seed(v['seeds'], 'delivered_val_loss')} | – |")
                continue
            per = _per_seed(v["seeds"], "val_loss")
            sent, baim = _per_seed(v["seeds"], "delivered_val_loss"), _per_seed(v["seeds"], "baim_val_loss")
            lines.append(f"| {name} | {v['val_loss']:.5f} | {per} | {sent} | {baim} |")
        lines += ["", f"chosen: {cloud['chosen']}", ""]
    if "distill" in result:
        from .tune_distill import report as distill_report

        lines += distill_report(result["distill"])
    return "\n".join(lines)


def cap_warning(result: dict[str, Any]) -> str | None:
    """A sentence when trials at the chosen rates were stopped by the cap (``None`` if none)."""
    tiers = result["tiers"]
    hit = {t: v.get("at_cap", {}).get(f"{v['chosen']:g}", 0) for t, v in tiers.items()}
    if not any(hit.values()):
        return None
    cap = result["converged"]["cap"]
    per = ", ".join(f"{t} {hit[t]} of {v['pairs']}" for t, v in tiers.items())
    return (
        f"The cap binds: at the chosen rates, trials whose best epoch was within their patience of epoch {cap} "
        f"({per}) were stopped by the cap, not by their patience: not known to be converged. "
        "Rerun with a larger --cap to train them further."
    )


def _per_seed(rows: list[dict], key: str) -> str:
    return ", ".join("–" if r.get(key) is None else f"{r[key]:.5f}" for r in rows)


def load_tuned(path: str | Path, budget: str = CONVERGED) -> tuple[dict[str, Any], str | None]:
    """``--tuned PATH``: the preset overrides a ``tune.json`` chose (``tier_lr``, and the cloud
    variant's, if it tuned the cloud) and its cloud recipe (None: it did not tune the cloud),
    for ``budget``: the cloud choice made at that budget where there is one, else the one made
    at ``converged`` (a tuning at one budget only, or made before budgets were named)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        tier_lr = raw["tier_lr"]
        if not isinstance(tier_lr, dict):
            raise TypeError("tier_lr is not a mapping")
        overrides: dict[str, Any] = {"tier_lr": {str(k): float(v) for k, v in tier_lr.items()}} if tier_lr else {}
        cloud = (raw.get("cloud_by_budget") or {}).get(budget) or raw.get("cloud")
        if cloud is None:
            return overrides, None
        if cloud.get("cloud_recipe") not in ("gentle", "paper") or not isinstance(cloud.get("overrides"), dict):
            raise ValueError("its cloud choice names no recipe")
        return overrides | cloud["overrides"], cloud["cloud_recipe"]
    except FileNotFoundError:
        raise ConfigError(f"--tuned {path}: no such file; make one with `baim tune --out DIR`") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"--tuned {path}: not a tune.json ({exc}); make one with `baim tune --out DIR`") from exc


def check_convergence(path: str | Path, budgets: list[Budget]) -> None:
    """Refuse ``--tuned PATH`` for a study whose ``converged`` budget stops trainings by another
    rule (cap, patience) than the tuning did: the rates, recipe and weights were chosen for
    trainings that end where the tuning's ended (a rate that wins at 30 epochs need not win at
    100)."""
    made = json.loads(Path(path).read_text()).get("converged")
    for b in budgets:
        if b.epochs is None and made is not None and (made.get("cap"), made.get("patience")) != (b.cap, b.patience):
            raise ConfigError(
                f"--tuned {path} was chosen with trainings capped at {made.get('cap')} epochs (patience "
                f"{made.get('patience')}), this study's converged budget caps them at {b.cap} (patience {b.patience}): "
                f"tune again into a new --out with --cap {b.cap} --patience {b.patience}, or run the study with --cap "
                f"{made.get('cap')} --patience {made.get('patience')}"
            )


def load_tuned_settings(path: str | Path) -> dict[str, float]:
    """``--tuned PATH``: the comparison settings a ``tune.json`` chose (the distillation
    baselines' weights, :mod:`baim.study.tune_distill`); empty if it tuned none."""
    from .tune_distill import WEIGHTS

    load_tuned(path)  # the same checks of the file first
    raw = json.loads(Path(path).read_text())
    chosen = (raw.get("distill") or {}).get("settings", {})
    fields = {f for f, _ in WEIGHTS.values()}
    if not isinstance(chosen, dict) or not all(k in fields and isinstance(v, (int, float)) for k, v in chosen.items()):
        raise ConfigError(f"--tuned {path}: its distill settings {chosen!r} are not weights of {sorted(fields)}")
    return {k: float(v) for k, v in chosen.items()}
