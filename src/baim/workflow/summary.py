"""The run's ``summary.json`` (every number of the run, from the phases' records) and its report."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict

from .. import schedule
from ..atomic import write_json
from ..report import write_report
from ..runfiles import source_strategy
from .context import Context
from .lifecycle import lifecycle_summary
from .results import (
    Arrivals,
    CloudTraining,
    Deployment,
    EdgeEvaluation,
    Integration,
    Partition,
    Personalization,
    Screening,
    Upload,
)


def summarize(ctx: Context) -> dict:
    """The summary of a finished run (every number the report shows), written with the report."""
    rd = ctx.rd
    up = rd.result("upload", Upload)
    evaluation = rd.result("edge_evaluation", EdgeEvaluation)
    deployment = rd.result("deployment", Deployment)
    personalization = rd.result("personalization", Personalization)
    integrations = [rd.result(f"integration_{k}", Integration) for k in range(1, ctx.final_version() + 1)]
    later_down = sum(i.bytes.down for i in integrations)
    models: dict[int, dict[str, dict]] = {}
    for r in evaluation.edges:
        models.setdefault(r["edge"], {})[r["model"]] = {
            k: v for k, v in r.items() if k not in ("edge", "task", "model")
        }
    edges = [
        {
            "edge": u.edge,
            "task": u.task,
            "tier": u.tier,
            "samples": u.samples,
            "models": models.get(u.edge, {}),
            **_delivery(ctx, u.edge, deployment.deliveries.get(str(u.edge))),
            **({"kept": personalization.kept[str(u.edge)]} if str(u.edge) in personalization.kept else {}),
        }
        for u in up.edges
    ]
    trained = {s: rd.result(f"cloud_{s}", CloudTraining) for s in ctx.cfg.strategies}
    strategies = {s: r.summary() for s, r in trained.items()}
    seconds = rd.phase_seconds()
    fid_count, real_vs_real = _fid_floor(trained.values(), evaluation, ctx.layout.task_names)
    arrivals = rd.result("arrivals", Arrivals)
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
        "fid_count": fid_count,
        "real_vs_real": real_vs_real,
        "edges": edges,
        "strategies": strategies,
        "partition": rd.result("partition", Partition).summary(),
        "bytes": {
            "upload": up.bytes.up,
            "download": deployment.bytes.down + later_down,
            "per_phase": {
                "upload": up.bytes.to_json(),
                "deployment": deployment.bytes.to_json(),
                "integrations": {"up": sum(i.bytes.up for i in integrations), "down": later_down},
                "evaluation": evaluation.bytes.to_json(),
            },
        },
        "screening": rd.result("screening", Screening).to_json(),
        "lifecycle": lifecycle_summary(ctx, trained[source_strategy(ctx.cfg.strategies)], integrations),
        "timeline": schedule.timeline(
            ctx.layout,
            arrivals.to_json(),
            seconds,
            list(deployment.edges),
            [i.to_json() for i in integrations],
            tuple(ctx.cfg.leave),
            source_strategy(ctx.cfg.strategies),
        ),
        "missing": {
            "upload": [m.to_json() for m in up.missing],
            "deployment": [m.to_json() for m in deployment.missing],
            "personalization": [m.to_json() for m in personalization.missing],
            "evaluation": [m.to_json() for m in evaluation.missing],
        },
    }
    write_json(rd.files.summary, summary)
    write_report(rd.root, summary, ctx.layout.task_names)
    return summary


def _fid_floor(
    trained: Iterable[CloudTraining], evaluation: EdgeEvaluation, tasks: list[str]
) -> tuple[int | None, dict]:
    """The FID sample count and each task's real-vs-real FID/KID (the floor every FID is read
    against): from the BAIM's scores, or, where it was not scored (``cloud_evaluation`` off),
    from its edges' (the same real test images per task)."""
    per_task = next((r.per_task for r in trained if r.per_task), None)
    if per_task is None:
        scored = {r["task"]: r for r in reversed(evaluation.edges) if "fid_real_vs_real" in r}
        per_task = {t: scored[t] for t in tasks if t in scored}  # in task order, like the BAIM's
    count = next((m["fid_count"] for m in per_task.values()), None)
    return count, {name: {"fid": m["fid_real_vs_real"], "kid": m["kid_real_vs_real"]} for name, m in per_task.items()}


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
