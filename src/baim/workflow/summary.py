"""The run's ``summary.json`` (every number of the run, from the phases' records) and its report."""

from __future__ import annotations

from dataclasses import asdict

from .. import schedule
from ..atomic import write_json
from ..report import write_report
from ..runfiles import source_strategy
from .context import Context
from .lifecycle import lifecycle_summary


def summarize(ctx: Context) -> dict:
    """The summary of a finished run (every number the report shows), written with the report."""
    rd = ctx.rd
    up = rd.result("upload")
    evaluation = rd.result("edge_evaluation")
    deployment = rd.result("deployment")
    personalization = rd.result("personalization")
    integrations = [rd.result(f"integration_{k}") for k in range(1, ctx.final_version() + 1)]
    later_down = sum(i["bytes"]["down"] for i in integrations)
    models: dict[int, dict[str, dict]] = {}
    for r in evaluation["edges"]:
        models.setdefault(r["edge"], {})[r["model"]] = {
            k: v for k, v in r.items() if k not in ("edge", "task", "model")
        }
    edges = [
        {
            "edge": u["edge"],
            "task": u["task"],
            "tier": u["tier"],
            "samples": u["samples"],
            "models": models.get(u["edge"], {}),
            **_delivery(ctx, u["edge"], deployment.get("deliveries", {}).get(str(u["edge"]))),
        }
        for u in up["edges"]
    ]
    strategies = {}
    for s in ctx.cfg.strategies:
        r = rd.result(f"cloud_{s}")
        strategies[s] = {
            k: r[k]
            for k in (
                "final_test_loss",
                "curve",
                "per_task",
                "connections",
                "candidates",
                "parameters",
                "tsgate_accuracy",
                "step0",
                "recipe",
            )
        }
    part = rd.result("partition")
    seconds = rd.phase_seconds()
    first_task = next(iter(next(iter(strategies.values()))["per_task"].values()))
    real_vs_real = {
        name: {"fid": m["fid_real_vs_real"], "kid": m["kid_real_vs_real"]}
        for name, m in next(iter(strategies.values()))["per_task"].items()
    }
    summary = {
        "preset": ctx.p.name,
        "cloud_recipe": ctx.cfg.cloud_recipe,
        "recipes": {
            "cloud": asdict(ctx.p.cloud),
            "personalize": asdict(ctx.p.personalize),
            "gate_init_from_screening": ctx.p.gate_init_from_screening,
        },
        "engine": ctx.cfg.engine,
        "dataset": ctx.ds.name,
        "seed": ctx.seed,
        "wall_seconds": round(sum(seconds.values()), 2),
        "phase_seconds": seconds,
        "fid_extractor": ctx.extractor,
        "fid_count": first_task["fid_count"],
        "real_vs_real": real_vs_real,
        "edges": edges,
        "strategies": strategies,
        "partition": {k: part[k] for k in ("max_abs_diff", "source_strategy", "baim_parameters", "tasks")},
        "bytes": {
            "upload": up["bytes"]["up"],
            "download": deployment["bytes"]["down"] + later_down,
            "per_phase": {
                "upload": up["bytes"],
                "deployment": deployment["bytes"],
                "integrations": {"up": sum(i["bytes"]["up"] for i in integrations), "down": later_down},
                "evaluation": evaluation["bytes"],
            },
        },
        "screening": rd.result("screening"),
        "lifecycle": lifecycle_summary(ctx, strategies, integrations),
        "timeline": schedule.timeline(
            ctx.layout,
            rd.result("arrivals"),
            seconds,
            deployment["edges"],
            integrations,
            tuple(ctx.cfg.leave),
            source_strategy(ctx.cfg.strategies),
        ),
        "missing": {
            "upload": up["missing"],
            "deployment": deployment["missing"],
            "personalization": personalization["missing"],
            "evaluation": evaluation["missing"],
        },
    }
    write_json(rd.files.summary, summary)
    write_report(rd.root, summary, ctx.layout.task_names)
    return summary


def _delivery(ctx: Context, edge: int, record: dict | None) -> dict:
    """An edge's bytes up (its upload message) and down (its deployment), and the model it was
    sent: which candidate, why, within which budget."""
    upload = ctx.rd.files.upload(edge)
    sent = (record or {}).get("sent_bytes")
    keep = ("candidate", "reason", "budget_bytes", "bytes", "within_budget", "val_loss", "upload_val_loss")
    return {
        "bytes": {"up": upload.stat().st_size if upload.is_file() else 0, "down": sent or 0},
        "delivery": {k: record[k] for k in keep} if record else None,
    }
