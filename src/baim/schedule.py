"""The lifecycle of a run: when uploads arrive and are fused, who leaves and joins, and the
timeline of it all (``baim run --schedule sync|async``).

Edges finish local training at different times. Here the times are *simulated*, from each
edge's tier and data: ``samples × epochs × training FLOPs per image of its tier`` (counted with
``torch.utils.flop_counter`` on the tier's learner) divided by a simulated device speed per tier
(:data:`TIER_GFLOPS`: a bigger tier stands for a stronger device). The cloud's own work is not
simulated: its durations in the timeline are the measured phase seconds of this run.

- ``sync`` (the paper's workflow): the cloud waits for every upload, fuses once, deploys.
- ``async``: the cloud fuses as soon as every task has at least one upload (the *quorum*), in
  order of arrival, and deploys; each later upload is then integrated by continual learning
  (:func:`baim.cloud.continual.integrate`: new learner, its connections, the touched squad's gate;
  other tasks stay exactly as they were), one BAIM version per upload, in arrival order.
  An edge's deployed model may lag its task's newest version by at most ``staleness`` versions;
  when it would lag more it is redeployed (and personalises again). ``staleness=0``: every
  version that touches an edge's task reaches it.
- ``leave``: an edge that leaves right after uploading keeps its learner in the BAIM and is
  never deployed to. ``join_late`` (async): an edge that joins after the first deployment;
  its upload is integrated when it arrives and it then gets its task's newest compact model.

Everything that decides *what* happens (arrival order, batches) is deterministic for a layout,
so a killed run resumes into the same plan; measured seconds only place events on the timeline.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .data.layout import Layout
from .errors import WorkflowError
from .learners import StagedVAE, tier_spec, vae_loss

# simulated training speed of an edge device of each tier (GFLOP/s of learner training)
TIER_GFLOPS = {"small": 0.5, "medium": 1.0, "large": 2.0}


def training_flops_per_image(tier: str, image_size: int, channels: int) -> int:
    """Forward + backward FLOPs of one training image for a tier's learner (batch of 8, / 8)."""
    torch.manual_seed(0)
    model = StagedVAE(tier_spec(tier, image_size, channels))
    x = torch.rand(8, channels, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        x_hat, mu, logvar = model(x)
        vae_loss(x_hat, x, mu, logvar, 0.00025)[0].backward()
    return int(counter.get_total_flops()) // 8


def plan(
    layout: Layout,
    accepted: list[int],
    schedule: str,
    geometry: tuple[int, int],
    join_late: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Who arrives when (simulated seconds) and which uploads form each BAIM version: batch 0 is
    the first fusion, every later batch one continual integration. ``geometry``: the images'
    (side, channels)."""
    p = layout.settings
    flops = {t: training_flops_per_image(t, *geometry) for t in sorted({e.tier for e in layout.edges})}
    finish = {
        e.edge: round(len(e.indices) * p.edge.epochs * flops[e.tier] / (TIER_GFLOPS.get(e.tier, 1.0) * 1e9), 3)
        for e in layout.edges
    }
    on_time = sorted((e for e in accepted if e not in join_late), key=lambda e: (finish[e], e))
    late = sorted((e for e in accepted if e in join_late), key=lambda e: (finish[e], e))
    task_of = {e.edge: e.task for e in layout.edges}
    needed = set(range(len(layout.tasks)))
    if schedule == "sync":
        first, rest = on_time, []
    else:
        covered: set[int] = set()
        first = []
        for e in on_time:
            first.append(e)
            covered.add(task_of[e])
            if covered >= needed:
                break
        rest = on_time[len(first) :]
    missing = sorted(layout.task_names[t] for t in needed - {task_of[e] for e in first})
    if missing:
        raise WorkflowError(
            f"no upload that arrives before the first fusion for tasks {missing} (edges that join late or were "
            "not accepted cannot open a task): every task needs one; add a new task later with `baim cloud add`"
        )
    return {
        "schedule": schedule,
        "tier_gflops": TIER_GFLOPS,
        "training_flops_per_image": flops,
        "finish_s": {str(e): finish[e] for e in sorted(finish)},
        "batches": [first] + [[e] for e in rest + late],
        "join_late": sorted(join_late),
    }


def redeploy(lag: dict[int, int], staleness: int) -> list[int]:
    """Edges whose deployed model now lags its task's newest version by more than ``staleness``."""
    return sorted(e for e, behind in lag.items() if behind > staleness)


def timeline(
    layout: Layout,
    arrivals: dict[str, Any],
    seconds: dict[str, float],
    first_deployed: list[int],
    integrations: list[dict[str, Any]],
    leave: tuple[int, ...],
    source: str,
) -> dict[str, Any]:
    """Events with simulated times: uploads at their edges' finish times, the cloud's work at its
    measured durations, one after the other (the cloud does one thing at a time)."""
    finish = {int(e): t for e, t in arrivals["finish_s"].items()}
    batches = arrivals["batches"]
    events: list[dict[str, Any]] = []
    task = {e.edge: layout.task_names[e.task] for e in layout.edges}
    for e in sorted(finish, key=lambda e: (finish[e], e)):
        if e in arrivals["join_late"]:
            continue
        events.append({"t_s": finish[e], "event": "upload", "edge": e, "task": task[e]})
        if e in leave:
            events.append({"t_s": finish[e], "event": "leave", "edge": e, "task": task[e]})
    start = max(finish[e] for e in batches[0])
    cloud = sum(seconds.get(p, 0.0) for p in ("screening", f"cloud_{source}", "partition"))
    t = start + cloud
    events.append({"t_s": round(t, 3), "event": "baim_version", "version": 0, "learners": len(batches[0])})
    t += seconds.get("deployment", 0.0)
    for e in first_deployed:
        events.append({"t_s": round(t, 3), "event": "deployment", "edge": e, "task": task[e], "version": 0})
    first_deployment = t
    t += seconds.get("personalization", 0.0)
    for k, result in enumerate(integrations, 1):
        (e,) = batches[k]
        arrive = finish[e] if e not in arrivals["join_late"] else max(finish[e], first_deployment)
        if e in arrivals["join_late"]:
            events.append({"t_s": round(arrive, 3), "event": "join", "edge": e, "task": task[e]})
            events.append({"t_s": round(arrive, 3), "event": "upload", "edge": e, "task": task[e]})
        t = max(t, arrive) + result["cloud_seconds"]
        events.append(
            {"t_s": round(t, 3), "event": "baim_version", "version": k, "learners": sum(map(len, batches[: k + 1]))}
        )
        t += result["edge_seconds"]
        for d in result["deployed"]:
            events.append({"t_s": round(t, 3), "event": "deployment", "edge": d, "task": task[d], "version": k})
    order = {"join": 0, "upload": 1, "leave": 2, "baim_version": 3, "deployment": 4}
    events.sort(key=lambda ev: (ev["t_s"], order[ev["event"]]))
    return {
        "clock": "simulated seconds: edges' local training from their tier and data, the cloud's work measured",
        "first_deployment_s": round(first_deployment, 3),
        "all_uploads_in_s": round(max(finish.values()), 3),
        "final_version": len(integrations),
        "events": events,
    }
