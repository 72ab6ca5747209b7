"""The lifecycle (:mod:`baim.schedule`): when each accepted upload arrives and which BAIM
version it joins, the integration of every late upload by continual learning (one version
each, redeployed to the edges whose models lag too far), the final version's evaluation, and
what the summary says of all that."""

from __future__ import annotations

import time

import numpy as np

from .. import schedule
from ..cloud import common_data
from ..cloud import partition as cut
from ..cloud.continual import integrate
from ..cloud.delivery import deliver_all
from ..models import BAIM, load_model, save_model
from ..transport import Message
from .context import Context, deploy_message, missing_edge, save_npy
from .results import Arrivals, Bytes, CloudTraining, FinalBaim, Integration, MissingEdge, Screening


def arrivals(ctx: Context) -> Arrivals:
    """When each accepted upload arrives (simulated) and which BAIM version it goes into."""
    accepted = list(ctx.rd.result("screening", Screening).accepted)
    late = tuple(e for e in ctx.cfg.join_late if e in accepted)
    geometry = (ctx.ds.image_size, ctx.ds.channels)
    return Arrivals.from_json(schedule.plan(ctx.layout, accepted, ctx.cfg.schedule, geometry, late))


def integration(ctx: Context, k: int) -> Integration:
    """BAIM version ``k``: the upload of batch ``k`` joins by continual learning; the touched
    task's compact model is cut (losslessly, kept for the record) and its edges whose models
    would now lag more than the staleness bound, and an edge that has just joined, are each
    sent the model chosen for them within their download budget, as at the first deployment
    (:mod:`baim.cloud.delivery`)."""
    batches = ctx.rd.result("arrivals", Arrivals).batches
    (edge,) = batches[k]
    accepted = ctx.accepted_learners()
    at = accepted.edges.index(edge)
    learner, task_id = accepted.learners[at], accepted.tasks[at]  # the upload's task, as screening accepted it
    task = ctx.layout.task_names[task_id]
    model = load_model(ctx.baim_folder(k - 1), "baim")
    assert isinstance(model, BAIM)
    images, cloud_tasks = common_data(ctx.layout, ctx.ds)
    curve = {
        name: ctx.ds.test.load(ids)
        for name in ctx.layout.task_names
        if (ids := ctx.p.curve_ids(ctx.layout.test[name])) is not None
    }
    names = [ctx.layout.task_names[t] for t in cloud_tasks]
    report = integrate(model, [(learner, task)], images, names, ctx.p.cloud, test_sets=curve, seed=ctx.seed + k)
    save_model(model, ctx.baim_folder(k))
    t = model.task_names.index(task)
    compact = cut(model, t)
    save_model(compact, ctx.compact_folder(k, task))
    versions = ctx.deployed_versions(k - 1)
    touched_at = [0] + [j for j in range(1, k + 1) if ctx.layout.edges[batches[j][0]].task == task_id]
    present = ctx.present(k)
    lag = {
        e: sum(1 for j in touched_at if j > versions[e])
        for e in present
        if ctx.layout.edges[e].task == task_id and e in versions
    }
    send = schedule.redeploy(lag, ctx.cfg.staleness)
    if edge in present and edge not in versions:  # just joined: its task's newest model
        send.append(edge)
    cloud_seconds = report["seconds"]
    deployed: list[int] = []
    missing: list[MissingEdge] = []
    mark = len(ctx.ledger.messages)
    plan = deliver_all(ctx.layout, ctx.ds, model, dict(zip(accepted.edges, accepted.learners)), sorted(send), ctx.seed)
    t0 = time.perf_counter()
    for e in sorted(send):
        sent = len(ctx.ledger.messages)
        reply = ctx.request(e, deploy_message(plan[e].model), "deployment")
        plan[e].sent_bytes = ctx.ledger.totals_since(sent)["down"]
        if reply.kind != "ack":
            missing.append(missing_edge(e, reply))
            continue
        reply = ctx.request(e, Message("train.personalize"), "personalization")
        if reply.kind != "metrics":
            missing.append(missing_edge(e, reply))
            continue
        deployed.append(e)
    return Integration(
        version=k,
        edge=edge,
        task=task,
        deployed=tuple(deployed),
        lag_before={str(e): v for e, v in sorted(lag.items())},
        missing=tuple(missing),
        cloud_seconds=cloud_seconds,
        edge_seconds=round(time.perf_counter() - t0, 3),
        bytes=Bytes(**ctx.ledger.totals_since(mark)),
        continual={k2: v for k2, v in report.items() if k2 != "log"},
        log=tuple({k2: v for k2, v in row.items() if k2 != "usage"} for row in report["log"]),
        compact_bytes=(ctx.compact_folder(k, task) / "weights.safetensors").stat().st_size,
        deliveries={str(e): d.record() for e, d in plan.items()},
    )


def final_baim(ctx: Context) -> FinalBaim:
    """The last BAIM version, evaluated exactly as the first one was (same test sets, FID
    sampling, extractor and seed), so the schedules compare on their final models."""
    model = load_model(ctx.baim_folder(ctx.final_version()), "baim")
    assert isinstance(model, BAIM)
    scored = ctx.p.cloud_evaluation  # off: not scored, like the first one
    evals = ctx.evaluate_baim(model, ctx.layout, ctx.ds, ctx.p, ctx.extractor, ctx.seed) if scored else {}
    for task, ev in evals.items():
        for procedure, arr in ev.images.items():
            save_npy(ctx.rd.files.baim_images("final", task, procedure), arr)
    per_task = {name: ev.metrics for name, ev in evals.items()}
    return FinalBaim(
        version=ctx.final_version(),
        parameters=model.num_parameters(),
        per_task=per_task,
        final_test_loss=float(np.mean([v["test_loss"] for v in per_task.values()])) if per_task else None,
    )


def lifecycle_summary(ctx: Context, first: CloudTraining, integrations: list[Integration]) -> dict:
    """The schedule's settings, which uploads went into which BAIM version, and the final
    BAIM's quality (the first one's with the sync schedule)."""
    arrivals = ctx.rd.result("arrivals", Arrivals)
    final = (
        ctx.rd.result("final_baim", FinalBaim).to_json()
        if integrations
        else {"version": 0, "per_task": first.per_task, "final_test_loss": first.final_test_loss}
    )
    return {
        "schedule": ctx.cfg.schedule,
        "staleness": ctx.cfg.staleness,
        "leave": sorted(ctx.cfg.leave),
        "join_late": sorted(ctx.cfg.join_late),
        "finish_s": arrivals.finish_s,
        "tier_gflops": arrivals.tier_gflops,
        "batches": arrivals.to_json()["batches"],
        "deployed_versions": {str(e): v for e, v in sorted(ctx.deployed_versions(ctx.final_version()).items())},
        "integrations": [i.summary() for i in integrations],
        "final": final,
    }
