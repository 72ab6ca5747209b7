"""``baim``: the workflow as it is (one upload, one download, personalisation), run in process
with every phase metered: the edges' work (local training, receiving the compact model,
personalisation) on the edge side, screening, BAIM training, partition on the cloud side.

Only the strategy that is deployed (finetune) is trained: the other two are the paper's
comparison of strategies, not part of what reaching the edges costs. The cloud's own
evaluations (the BAIM's FIDs at step 0 and at the end) are measurement, metered apart and left
out of its compute, and so are the per-epoch test-loss curves (``step_cost.uncounted``: no
FLOPs; their CPU seconds stay in the side's, a few per cent of an epoch; a study logs none).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

from ...atomic import write_json
from ...config import RunConfig, parse_download_budget
from ...errors import WorkflowError
from ...learners import StagedVAE
from ...models import BAIM, generate
from ...models.evaluation import learner_prior
from ...models.io import WEIGHTS
from ...runfiles import RunFiles
from ...runview import Run
from ...transport import ByteLedger, InProcessTransport
from ...workflow import Metering, Workflow, edge_nodes, prepare
from ..common import Context, quality_of
from ..measure import Meter, latency_ms
from ..row import Compute, MethodRow, method_row

EDGE_PHASES = ("upload", "deployment", "personalization")
CLOUD_PHASES = ("screening", "cloud_finetune", "partition")


# the workflow's phases that only measure: metered apart (CPU seconds), FLOP counter paused
MEASUREMENT = ("evaluation", "edge_evaluation")


@contextmanager
def _measuring(meter: Meter, side: str, phase: str) -> Iterator[None]:
    with meter.side(side, phase), meter.paused():
        yield


def metering(meter: Meter) -> Metering:
    """The workflow's metering hook for the comparison: each edge's work in the phases that
    reach it, and the cloud's screening, BAIM training, partition and deployment; the BAIM's
    FID evaluations and the edges' evaluations are measurement, not training: booked apart
    (``cloud/evaluation``, ``cloud/edge_evaluation``) with the FLOP counter paused."""

    def hook(side: str, phase: str) -> AbstractContextManager[Any]:
        if side == "cloud" and phase in MEASUREMENT:
            return _measuring(meter, side, phase)
        if side == "edge":
            wanted = phase in EDGE_PHASES
        else:
            wanted = phase in ("screening", "partition", "deployment") or phase.startswith("cloud_")
        return meter.side(side, phase) if wanted else nullcontext()

    return hook


def run_workflow(out: Path, cfg: RunConfig) -> dict:
    """Run (or reuse) the workflow in ``out`` with the meters on; returns what was measured."""
    measured = RunFiles(out).compare_measure
    if measured.is_file():
        return json.loads(measured.read_text())
    rd, layout, ds, _ = prepare(out, cfg)
    if rd.done("summary"):
        raise WorkflowError(f"{out} holds a finished run without its measurements; delete it to re-measure")
    meter, ledger = Meter(), ByteLedger()
    nodes = edge_nodes(rd, layout, ds, cfg.seed)
    evaluated = ("initial", "personalized")  # local's and baim's rows; the deployed model is not compared
    wf = Workflow(
        rd, layout, ds, InProcessTransport(nodes, ledger), ledger, cfg, meter=metering(meter), evaluated=evaluated
    )
    t0 = time.perf_counter()
    with meter.counting():
        wf.run()
    secs = Run(out).summary()["phase_seconds"]
    result = {
        "meter": meter.to_dict(),
        "messages": ledger.messages,
        "wall_s": round(sum(secs.get(p, 0.0) for p in ("layout", *EDGE_PHASES, *CLOUD_PHASES)), 2),
        "workflow_wall_s": round(time.perf_counter() - t0, 2),
    }
    write_json(measured, result)
    return result


def _same_layout(ctx: Context, out: Path) -> None:
    """The workflow's layout is the one every other method uses (same edges, slices, tests)."""
    theirs = Run(out).layout
    if theirs.edges != ctx.layout.edges or theirs.cloud != ctx.layout.cloud or theirs.test != ctx.layout.test:
        raise WorkflowError(f"{RunFiles(out).layout} differs from the comparison's layout; use a fresh folder")


def _meter_sums(meter: dict, side: str, phases: tuple[str, ...]) -> tuple[float, int]:
    rows = [v for k, v in meter.items() if k.split("/")[0] == side and k.split("/")[1] in phases]
    return sum(r["cpu_s"] for r in rows), sum(r["flops"] for r in rows)


def run(ctx: Context, out: Path) -> MethodRow:
    cfg = RunConfig.from_dict(ctx.cfg.to_dict() | {"strategies": ["finetune"]})
    m = run_workflow(out, cfg)
    _same_layout(ctx, out)
    run = Run(out)
    summary = run.summary()
    ecpu, eflops = _meter_sums(m["meter"], "edge", EDGE_PHASES)
    ccpu, cflops = _meter_sums(m["meter"], "cloud", ("screening", "cloud_finetune", "partition", "deployment"))
    rows = [
        {"edge": e["edge"], "task": e["task"], **quality_of(e["models"]["personalized"])}
        for e in summary["edges"]
        if "personalized" in e["models"]
    ]
    latency, storage_edge = [], 0
    for e in ctx.edges:
        storage_edge += (run.files.edge(e, "personalized") / WEIGHTS).stat().st_size
        model = run.edge_model(e, "personalized")
        assert isinstance(model, BAIM)
        latency.append(latency_ms(partial(generate, model, 16, ctx.seed)))
    per_task = summary["partition"]["tasks"]
    return method_row(
        "baim",
        "edges train their tier's learner, upload it once; the cloud screens, fuses, trains the BAIM (finetune) "
        "on common data, partitions it; each edge downloads its task's compact model once and personalises it",
        {
            "edge_epochs": ctx.preset.edge.epochs,
            "cloud_epochs": ctx.preset.cloud.epochs,
            "personalize_epochs": ctx.preset.personalize.epochs,
            "strategy": "finetune",
            "run_dir": str(out),
            # what each edge's delivery chose (lossless, budgeted, distilled or its own upload)
            "delivered": {str(e["edge"]): e["delivery"]["candidate"] for e in summary["edges"] if e.get("delivery")},
            # under delivery_choice "edge": what each edge kept after personalising (personalised or upload)
            "kept": {str(e["edge"]): e["kept"]["kept"] for e in summary["edges"] if e.get("kept")},
        },
        messages=m["messages"],
        raw_data_bytes=0,  # no message of the workflow carries an image of an edge's slice
        compute=Compute(ecpu, ccpu, int(eflops), int(cflops)),
        storage=(storage_edge, run.cloud_storage_bytes("finetune")),
        latency_ms=latency,
        round_trips=0,
        wall_s=m["wall_s"],
        per_edge=rows,
        scaling_inputs={
            "compact": {t: {"bytes": v["bytes"], "learners": v["learners"]} for t, v in per_task.items()},
            "edges_per_task": [len(ctx.edges_of(t)) for t in range(len(ctx.layout.tasks))],
            "budgeted": parse_download_budget(ctx.preset.download_budget) is not None,
            "edge_cpu_per_phase": {k: v for k, v in m["meter"].items() if k.startswith("edge/")},
            "cloud_cpu_per_phase": {k: v for k, v in m["meter"].items() if k.startswith("cloud/")},
        },
    )


def run_local(ctx: Context, out: Path) -> MethodRow:
    """``local``: the workflow's initial learners, trained by the same code on the same slices
    (the ``upload`` phase's edge work), that never leave their edge."""
    m = run_workflow(out, RunConfig.from_dict(ctx.cfg.to_dict() | {"strategies": ["finetune"]}))
    _same_layout(ctx, out)
    run = Run(out)
    summary = run.summary()
    ecpu, eflops = _meter_sums(m["meter"], "edge", ("upload",))
    rows = [{"edge": e["edge"], "task": e["task"], **quality_of(e["models"]["initial"])} for e in summary["edges"]]
    latency, storage = [], 0
    for e in ctx.edges:
        storage += (run.files.edge(e, "initial") / WEIGHTS).stat().st_size
        model = run.edge_model(e, "initial")
        assert isinstance(model, StagedVAE)
        prior = learner_prior(model, ctx.local_images(e), ctx.seed)
        latency.append(latency_ms(partial(generate, model, 16, ctx.seed, prior=prior)))
    return method_row(
        "local",
        "each edge trains its tier's learner on its own slice and never communicates (the workflow's initial models)",
        {"edge_epochs": ctx.preset.edge.epochs},
        messages=[],
        raw_data_bytes=0,
        compute=Compute(ecpu, 0.0, int(eflops), 0),
        storage=(storage, 0),
        latency_ms=latency,
        round_trips=0,
        wall_s=summary["phase_seconds"].get("upload", 0.0),
        per_edge=rows,
    )
