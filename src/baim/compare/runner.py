"""``baim compare``: every method on the run's layout, measured the same way.

Each method's row is written to ``DIR/methods/METHOD.json`` as soon as it is measured, so a
rerun skips what is done. ``DIR/compare.json`` gathers them with the settings, the findings
(FedAvg's and FD's bytes to reach baim's quality, who beats baim on what and at what cost),
and the scaling table; ``DIR/compare.md`` and ``DIR/figures/`` present them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..config import RunConfig
from ..data import load_dataset
from ..data.layout import Layout, make_layout
from ..errors import ConfigError
from ..metrics import get_extractor
from ..models.fit import stopping_counts, stopping_record
from ..runfiles import RunFiles
from ..runview import Run
from . import scaling
from .common import FID_SAMPLING, Context, Settings

METHODS = (
    "baim",
    "local",
    "central",
    "kd",
    "fedavg",
    "fedavg_large",
    "fedavg_ft",
    "fd",
    "sl",
    "broadcast",
    "broadcast_budget",
    "broadcast_keep",
    "cloud_only",
    "ensemble_distill",
)
# the methods the scaling model has formulas for (the variants and controls are measured only)
SCALED = ("baim", "local", "central", "kd", "fedavg", "fd", "sl")
SAMPLING_NOTE = (
    "fitted: fid_count images decoded from z drawn from a full-covariance Gaussian fitted to the model's "
    "posterior codes of its own training data (an edge's model: the edge's slice; a cloud model: the task's "
    "pooled training images), compared with the layout's real FID set of the task; same extractor, count and "
    "seed for every method, the workflow's evaluate()"
)


def default_settings(cfg: RunConfig) -> Settings:
    """Budgets from the preset: round-based methods get as many passes over an edge's slice as
    baim's edges make (local training + personalisation), one local epoch per round."""
    p = cfg.resolved_preset()
    budget = p.edge.epochs + p.personalize.epochs
    return Settings(rounds=budget, local_epochs=1, sl_epochs=budget, central_epochs=p.edge.epochs)


def _run_method(name: str, ctx: Context, out: Path) -> dict:
    from .methods import bottom_up, central, controls, federated, split

    if name == "baim":
        return bottom_up.run(ctx, out / "baim").to_dict()
    if name == "local":
        return bottom_up.run_local(ctx, out / "baim").to_dict()
    if name == "central":
        return central.run_central(ctx).to_dict()
    if name == "kd":
        return central.run_kd(ctx).to_dict()
    if name == "fedavg":
        return federated.run_fedavg(ctx).to_dict()
    if name == "fedavg_large":
        return federated.run_fedavg(ctx, capacity="largest").to_dict()
    if name == "fedavg_ft":
        return federated.run_fedavg(ctx, finetune=True).to_dict()
    if name == "broadcast":
        return controls.run_broadcast(ctx, out / "baim").to_dict()
    if name == "broadcast_budget":
        return controls.run_broadcast(ctx, out / "baim", within_budget=True).to_dict()
    if name == "broadcast_keep":
        return controls.run_broadcast(ctx, out / "baim", within_budget=True, keep=True).to_dict()
    if name == "cloud_only":
        return controls.run_cloud_only(ctx).to_dict()
    if name == "ensemble_distill":
        return controls.run_ensemble_distill(ctx, out / "baim").to_dict()
    if name == "fd":
        return federated.run_fd(ctx).to_dict()
    if name == "sl":
        return split.run_sl(ctx).to_dict()
    raise ConfigError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def method_cell(name: str, ctx: Context, out: Path) -> dict:
    """Method ``name``'s row in ``out/methods/NAME.json``: read if it is there (a rerun resumes),
    else measured and written atomically."""
    path = out / "methods" / f"{name}.json"
    if path.is_file():
        return dict(json.loads(path.read_text()))
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    t0 = time.perf_counter()
    with stopping_record() as stoppers:
        row = _run_method(name, ctx, out)
    # how this process's early-stopped trainings ended (phases a resumed workflow reused are not in it)
    row["stopping"] = stopping_counts(stoppers)
    row.setdefault("fid_sampling", FID_SAMPLING)
    row["fid"] = row["fid_fitted"]
    row["kid"] = row["kid_fitted"]
    row["method_wall_s_with_evaluation"] = round(time.perf_counter() - t0, 2)
    write_json(path, row)
    return row


def make_context(out: Path, cfg: RunConfig, settings: Settings | None = None, keep_messages: bool = False) -> Context:
    preset = cfg.resolved_preset()
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    path = RunFiles(out).layout
    if path.is_file():
        layout = Layout.load(path)
    else:
        layout = make_layout(ds, preset, seed=cfg.seed, data_dir=cfg.data_dir)
        layout.save(path)
    return Context(cfg, layout, ds, layout.settings, settings or default_settings(cfg), keep_messages)


def compare(
    out: str | Path,
    cfg: RunConfig,
    methods: tuple[str, ...] = METHODS,
    settings: Settings | None = None,
    keep_messages: bool = False,
    ctx: Context | None = None,
) -> dict:
    out = Path(out)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"unknown methods {bad}; choose from {', '.join(METHODS)}")
    get_extractor(cfg.fid_extractor)
    out.mkdir(parents=True, exist_ok=True)
    ctx = ctx or make_context(out, cfg, settings, keep_messages)
    rows = [method_cell(name, ctx, out) for name in methods]
    result: dict[str, Any] = {
        "preset": ctx.preset.name,
        "seed": cfg.seed,
        "dataset": cfg.dataset,
        "edges": len(ctx.layout.edges),
        "tasks": ctx.layout.task_names,
        "tiers": {str(e.edge): e.tier for e in ctx.layout.edges},
        "fid_extractor": cfg.fid_extractor,
        "fid_count": min(ctx.preset.fid_count, min(len(v) for v in ctx.layout.test.values()) // 2),
        "fid_sampling": SAMPLING_NOTE,
        "settings": {
            "rounds": ctx.settings.rounds,
            "local_epochs": ctx.settings.local_epochs,
            "sl_epochs": ctx.settings.sl_epochs,
            "central_epochs": ctx.settings.central_epochs,
            "distill_weight": ctx.settings.distill_weight,
            "kd_weight": ctx.settings.kd_weight,
            "edge_epochs": ctx.preset.edge.epochs,
            "personalize_epochs": ctx.preset.personalize.epochs,
            "cloud_epochs": ctx.preset.cloud.epochs,
        },
        "definitions": {
            "bytes_up/down": "sum over all edges of encoded message sizes (baim's codec, a ByteLedger), "
            "evaluation and inference traffic left out",
            "raw_data_bytes": "bytes of edges' training images inside messages",
            "cpu_s": "time.process_time() of the side's work (all threads), FLOP counter active",
            "flops": "torch.utils.flop_counter (matmul/conv forward and backward)",
            "storage": "bytes each side keeps after the method (safetensors weights, received raw images; "
            "edges' own slices and the cloud's common data, held in every method, are left out)",
            "latency_ms": "median of 7 wall ms (after a warm-up) of one 16-image generation from the fitted "
            "prior where the model runs (codec included for round trips; network transit not simulated); "
            "round_trips: network round trips a generation needs",
            "wall_s": "wall seconds to deployed models on this machine, evaluation left out",
        },
        "methods": rows,
    }
    result["findings"] = findings(rows)
    scaled = [r for r in rows if r["method"] in SCALED]
    if len(scaled) > 1:
        per_task = [len(ctx.edges_of(t)) for t in range(len(ctx.layout.tasks))]
        result["scaling"] = scaling.table(scaled, len(ctx.layout.edges), len(ctx.layout.tasks), per_task)
    write_json(out / "compare.json", result)
    from .report import write_outputs

    write_outputs(out, result)
    return result


def _reach(rounds: list[dict], key: str, target: float) -> dict[str, Any]:
    """The first scored round at or below ``target``. A curve scored every few rounds resolves
    it to between the scored round before (``after_round``, ``bytes_cum_before``: not reached
    there) and this one."""
    before = None
    for r in (x for x in rounds if key in x):
        if r[key] <= target:
            out = {"reached": True, "round": r["round"], "bytes_cum": r["bytes_cum"]}
            if before is not None and before["round"] < r["round"] - 1:
                out |= {"after_round": before["round"], "bytes_cum_before": before["bytes_cum"]}
            return out
        before = r
    last = rounds[-1]
    return {"reached": False, "round": None, "after_rounds": last["round"], "bytes_cum_at_last": last["bytes_cum"]}


def findings(rows: list[dict]) -> dict[str, Any]:
    by = {r["method"]: r for r in rows}
    out: dict[str, Any] = {}
    if "baim" not in by:
        return out
    b = by["baim"]
    baim_bytes = b["bytes_up"] + b["bytes_down"]
    out["baim"] = {"bytes": baim_bytes, "fid": b["fid"], "test_loss": b["test_loss"], "nll_bpd": b["nll_bpd"]}
    for m in ("fedavg", "fedavg_large", "fedavg_ft", "fd"):
        if m not in by or not by[m].get("rounds"):
            continue
        for key, baim_key in (("nll_bpd", "nll_bpd"), ("test_loss", "test_loss")):
            r = _reach(by[m]["rounds"], key, b[baim_key])
            if r["reached"]:
                r["ratio_to_baim_bytes"] = r["bytes_cum"] / baim_bytes
            else:
                r["ratio_to_baim_bytes_lower_bound"] = r["bytes_cum_at_last"] / baim_bytes
            out[f"{m}_bytes_to_reach_baim_{key}"] = r
    beats = []
    for m, r in by.items():
        if m == "baim":
            continue
        better = [k for k in ("nll_bpd", "fid", "test_loss") if r[k] < b[k]]
        if better:
            beats.append(
                {
                    "method": m,
                    "better_on": better,
                    "fid": r["fid"],
                    "test_loss": r["test_loss"],
                    "nll_bpd": r["nll_bpd"],
                    "bytes_vs_baim": (r["bytes_up"] + r["bytes_down"]) / baim_bytes,
                    "raw_data_bytes": r["raw_data_bytes"],
                    "cloud_cpu_s": r["cloud_cpu_s"],
                    "edge_cpu_s": r["edge_cpu_s"],
                }
            )
    out["beat_baim_on_quality"] = beats
    loses = {}
    for key in (
        "bytes_up",
        "bytes_down",
        "edge_cpu_s",
        "cloud_cpu_s",
        "edge_flops",
        "cloud_flops",
        "edge_storage_bytes",
        "cloud_storage_bytes",
        "latency_ms",
        "wall_s",
        "fid",
        "test_loss",
    ):
        lower = sorted(m for m, r in by.items() if m != "baim" and r[key] < b[key])
        if lower:
            loses[key] = lower
    out["methods_better_than_baim_per_kpi"] = loses
    return out


def scale_check(
    out: Path, big_edges: int, seed: int = 0, data_dir: str | None = None, extractor: str = "domain"
) -> dict:
    """baim on the smoke preset with its 3 edges and with ``big_edges`` (real runs, in process),
    and the extrapolation from the first checked against the second; added to compare.json."""
    from .methods.bottom_up import run_workflow

    base = dict(preset="smoke", seed=seed, data_dir=data_dir, fid_extractor=extractor, strategies=("finetune",))
    small = out / "scale-check" / "smoke-3"
    big = out / "scale-check" / f"smoke-{big_edges}"
    for folder, cfg in (
        (small, RunConfig(**base)),  # type: ignore[arg-type]
        (big, RunConfig(**base, overrides={"num_edges": big_edges})),  # type: ignore[arg-type]
    ):
        if not Run(folder).done("partition"):  # a run partitioned (metered or not) is reused
            run_workflow(folder, cfg)
    result = json.loads((out / "compare.json").read_text())
    result["scale_check"] = scaling.check(small, big)
    write_json(out / "compare.json", result)
    from .report import write_outputs

    write_outputs(out, result)
    return result
