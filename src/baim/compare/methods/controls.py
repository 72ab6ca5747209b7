"""Controls that locate baim's gain: what a cheaper use of the same uploads or the same common
data gives, measured like every method of ``baim compare``.

- ``broadcast``: per task, the upload with the lowest loss on the cloud's common images of the
  task (what screening measures) is fine-tuned there on those images, sent to every edge of the
  task, and personalised on each edge as baim's compact model is. If baim only beat its weaker
  edges by handing them the best edge's quality, this matches it.
- ``broadcast_budget``: the same, but each edge gets the best upload of its task that fits its
  own download budget (the budget baim's delivery keeps): broadcast without the extra capacity
  a small edge could not have received from baim.
- ``broadcast_keep``: ``broadcast_budget`` with the rule baim's per-edge delivery applies against
  the edge's own upload: the cloud sends the upload back when it is better on the edge's
  validation images (or, under ``delivery_choice = "edge"``, the edge keeps it when it beats
  what it personalised). baim's edges may fall back on their uploads; this control may too,
  so an advantage of baim over it is not that fallback.
- ``cloud_only``: per task, a VAE of the largest tier trained on the cloud's common images of the
  task alone, sent to the task's edges: what the common data is worth without any edge.
- ``ensemble_distill``: one-shot ensemble distillation (FedDF/FENS-style): per edge, a fresh
  learner of the edge's own tier trained in the cloud on the task's common images with
  ½·(MSE + β·KL) + ½·MSE to the mean reconstruction of the task's uploads, sent down once.

The broadcasts and the distillation reuse baim's own uploads (the workflow run of the same
layout and budget in ``DIR/baim``): their upload bytes and edge compute are baim's upload
phase, counted as theirs.
Fine-tuning a trained upload scales its rate like baim's recipe for trained weights
(``trained_lr_scale``); with converging settings every cloud training stops on the common
data's validation part of the task.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ...cloud.delivery import budget_bytes
from ...learners import StagedVAE, weights_bytes, weights_digest
from ...models import generate, model_from, reconstruction_metrics, to_parts
from ...models.evaluation import learner_prior
from ...runview import Run
from ...transport import Message
from ..common import Context, build, largest_tier, train_vae
from ..measure import Meter, Wire, latency_ms, model_bytes
from ..row import Compute, MethodRow, method_row
from .bottom_up import run_workflow


def _uploads(ctx: Context, out: Path) -> tuple[dict[int, StagedVAE], list[dict], Compute]:
    """baim's uploads (the workflow run in ``out``, run first if missing), their messages and
    the edges' compute to make them."""
    from ...config import RunConfig

    m = run_workflow(out, RunConfig.from_dict(ctx.cfg.to_dict() | {"strategies": ["finetune"]}))
    run = Run(out)
    models = {}
    for e in ctx.edges:
        model = run.edge_model(e, "initial")
        assert isinstance(model, StagedVAE)
        models[e] = model
    messages = [x for x in m["messages"] if x["phase"] == "upload"]
    up = m["meter"].get("edge/upload", {"cpu_s": 0.0, "flops": 0})
    return models, messages, Compute(up["cpu_s"], 0.0, int(up["flops"]), 0)


def _trained_rate_opt(ctx: Context, model: StagedVAE) -> torch.optim.Optimizer:
    """Adam whose rate is scaled like baim's for weights that arrive trained."""
    return torch.optim.Adam([{"params": model.parameters(), "scale": ctx.preset.cloud.trained_lr_scale}])


def _deliver(ctx: Context, wire: Wire, meter: Meter, e: int, model: StagedVAE, what: str) -> StagedVAE:
    """The model down to edge ``e`` through the codec; returns what the edge decodes."""
    manifest, state = to_parts(model)
    got = wire.down(e, Message("deploy", manifest, state), "deployment")
    with meter.edge("deployment"):
        received = model_from(got.meta, got.tensors, f"{what} for edge {e}", "learner")
    assert isinstance(received, StagedVAE)
    return received


def _row(
    ctx: Context,
    name: str,
    description: str,
    settings: dict,
    wire: Wire,
    meter: Meter,
    models: dict[int, StagedVAE],
    upload: tuple[list[dict], Compute] | None,
    wall: float,
    cloud_bytes: int,
) -> MethodRow:
    messages = (upload[0] if upload else []) + wire.ledger.messages
    ecpu, eflops = meter.totals("edge")
    ccpu, cflops = meter.totals("cloud")
    if upload:
        ecpu, eflops = ecpu + upload[1].edge_cpu_s, eflops + upload[1].edge_flops
    lat = []
    for e, m in models.items():
        prior = learner_prior(m, ctx.local_images(e), ctx.seed)
        lat.append(latency_ms(partial(generate, m, 16, ctx.seed, prior=prior)))
    return method_row(
        name,
        description,
        settings,
        messages=messages,
        raw_data_bytes=0,
        compute=Compute(ecpu, ccpu, int(eflops), int(cflops), meter.to_dict()),
        storage=(sum(model_bytes(m) for m in models.values()), cloud_bytes),
        latency_ms=lat,
        round_trips=0,
        wall_s=wall,
        per_edge=[ctx.evaluate_edge(e, models[e]) for e in ctx.edges],
    )


def _cloud_epochs(ctx: Context) -> int:
    """A cloud training's epochs: the preset's cloud epochs at a fixed budget, the settings' cap
    when converging."""
    return ctx.settings.central_epochs if ctx.settings.patience else ctx.preset.cloud.epochs


def best_fitting(edge: int, loss: dict[int, float], size: dict[int, int], limit: int | None) -> int:
    """The upload (by edge) with the lowest ``loss`` among those of at most ``limit`` bytes
    (None: any); the edge's own upload when none fits (it has it already)."""
    fitting = [u for u in loss if limit is None or size[u] <= limit]
    return min(fitting, key=lambda u: (loss[u], u)) if fitting else edge


def keep_better(
    ctx: Context, e: int, model: StagedVAE, upload: StagedVAE, beta: float
) -> tuple[StagedVAE, dict[str, Any]]:
    """The better on edge ``e``'s validation images of ``model`` and its own ``upload`` (a copy),
    scored as baim's delivery scores them (the test loss at ``beta``, the run's seed); ``model``
    on a tie or without validation images; with the record of the choice."""
    val = ctx.val_images(e)
    if not len(val):
        return model, {"kept": "sent", "val_loss": {}}
    loss = {
        name: reconstruction_metrics(m, val, kld_weight=beta, seed=ctx.seed)["test_loss"]
        for name, m in (("sent", model), ("upload", upload))
    }
    kept = "upload" if loss["upload"] < loss["sent"] else "sent"
    return (copy.deepcopy(upload) if kept == "upload" else model), {"kept": kept, "val_loss": loss}


def run_broadcast(ctx: Context, out: Path, within_budget: bool = False, keep: bool = False) -> MethodRow:
    """``broadcast``; ``within_budget`` (``broadcast_budget``): each edge is sent the best
    upload of its task *that fits its own download budget* (the one baim's delivery must keep,
    so a small edge is not handed a large edge's model that baim could not send it); ``keep``
    as well (``broadcast_keep``): baim's delivery rule against the edge's own upload
    (:func:`keep_better`), where the preset's ``delivery_choice`` puts it: ``"cloud"``, the
    cloud sends the upload back when it beats the broadcast model on the edge's validation
    images; ``"edge"``, the edge keeps its upload when it beats what it personalised."""
    if keep and not within_budget:
        raise ValueError("broadcast_keep is broadcast_budget with the edge's keep rule: pass within_budget=True")
    uploads, up_messages, up_compute = _uploads(ctx, out)
    common, tasks = ctx.common()
    val, val_tasks = ctx.common_val()
    wire, meter = ctx.wire(), Meter()
    chosen: dict[str, int] = {}
    sent: dict[int, int] = {}
    kept: dict[str, dict] = {}
    deployed: dict[int, StagedVAE] = {}
    cloud_bytes = 0
    reused_wall = 0.0
    t0 = time.perf_counter()
    with meter.counting():
        for t in range(len(ctx.layout.tasks)):
            edges = ctx.edges_of(t)
            if not edges:
                continue
            x = common[tasks == t]
            with meter.cloud("screening"):
                loss = {
                    e: reconstruction_metrics(uploads[e], x, kld_weight=ctx.preset.edge.kld_weight, seed=ctx.seed)[
                        "test_loss"
                    ]
                    for e in edges
                }
            chosen[ctx.layout.task_names[t]] = min(loss, key=lambda e: loss[e])
            size = {e: len(weights_bytes(uploads[e])) for e in edges}
            tuned: dict[int, StagedVAE] = {}
            for e in edges:
                limit = budget_bytes(ctx.preset.download_budget, size[e]) if within_budget else None
                best = best_fitting(e, loss, size, limit)
                sent[e] = best
                if best not in tuned:

                    def finetune(upload: StagedVAE = uploads[best], t: int = t, x: Any = x) -> StagedVAE:
                        model = copy.deepcopy(upload)
                        recipe = ctx.converging(ctx.recipe(600 + t, model.spec.tier), _cloud_epochs(ctx))
                        task_val = val[val_tasks == t] if recipe.patience else None
                        train_vae(model, x, recipe, recipe.epochs, opt=_trained_rate_opt(ctx, model), val=task_val)
                        return model

                    key = ("finetune", t, weights_digest(uploads[best]))
                    model, again = _once(ctx, meter, key, "cloud", "cloud_finetune", finetune)
                    reused_wall += again
                    tuned[best] = model
                    cloud_bytes += model_bytes(uploads[best]) + model_bytes(model)
                send = tuned[best]
                if keep and ctx.preset.delivery_choice == "cloud":
                    with meter.cloud("delivery_choice"):
                        send, kept[str(e)] = keep_better(ctx, e, send, uploads[e], ctx.preset.cloud.kld_weight)
                received = _deliver(ctx, wire, meter, e, send, "broadcast model")

                def personalise(received: StagedVAE = received, e: int = e) -> StagedVAE:
                    recipe = ctx.recipe(1000 * e + 3, received.spec.tier)
                    train_vae(
                        received,
                        ctx.local_images(e),
                        recipe,
                        ctx.preset.personalize.epochs,
                        opt=_trained_rate_opt(ctx, received),
                    )
                    return received

                key = ("personalise", e, weights_digest(received))
                received, again = _once(ctx, meter, key, "edge", "personalization", personalise)
                reused_wall += again
                if keep and ctx.preset.delivery_choice == "edge":
                    with meter.edge("personalization"):
                        beta = ctx.preset.personalize.kld_weight
                        received, kept[str(e)] = keep_better(ctx, e, received, uploads[e], beta)
                deployed[e] = received
    if keep:
        name = "broadcast_keep"
        what = (
            "control: broadcast_budget with baim's delivery rule against the edge's own upload: the better of the "
            f"two on the edge's validation images is {'sent' if ctx.preset.delivery_choice == 'cloud' else 'kept'} "
            f"(delivery_choice {ctx.preset.delivery_choice!r})"
        )
    elif within_budget:
        name = "broadcast_budget"
        what = (
            "control: each edge gets the upload of its task with the lowest loss on the cloud's common images among "
            f"those within its download budget ({ctx.preset.download_budget}), fine-tuned on them in the cloud and "
            "personalised there (baim's uploads, no fusion)"
        )
    else:
        name = "broadcast"
        what = (
            "control: per task the upload with the lowest loss on the cloud's common images, fine-tuned on them in "
            "the cloud, sent to every edge of the task and personalised there (baim's uploads, no fusion)"
        )
    settings = {"chosen_upload": chosen, "cloud_epochs": _cloud_epochs(ctx), "patience": ctx.settings.patience}
    if within_budget:
        settings["sent_upload"] = {str(e): u for e, u in sent.items()}
    if keep:
        settings["kept"] = kept
    return _row(
        ctx,
        name,
        what,
        settings,
        wire,
        meter,
        deployed,
        (up_messages, up_compute),
        time.perf_counter() - t0 + reused_wall,
        cloud_bytes,
    )


def _once(
    ctx: Context, meter: Meter, key: tuple, side: str, phase: str, work: Callable[[], StagedVAE]
) -> tuple[StagedVAE, float]:
    """``work()`` under ``meter``'s ``side``/``phase``, once per context and ``key``; returns a
    model of its own and the wall seconds *not* spent now (0 the first time).

    Why: the three broadcasts share most of their work. An edge whose budget admits the
    task's best upload gets, in ``broadcast_budget`` and ``broadcast_keep``, exactly what
    ``broadcast`` sent it: the same upload fine-tuned by the same recipe, personalised by the
    same recipe from the same weights (the key holds the weights' digest). Training it again
    cost a study ~10 % of its baim unit and could only differ by the posterior noise's draws.
    A later call books the first one's measured CPU seconds and FLOPs to the same side and
    phase (each method is charged its full cost, as if run alone) and reports its wall seconds
    for the method's ``wall_s``."""
    memo = ctx.cache.setdefault("broadcast_work", {})
    if key in memo:
        got = memo[key]
        meter.cpu[(side, phase)] += got["cpu"]
        meter.flops[(side, phase)] += got["flops"]
        return copy.deepcopy(got["model"]), got["wall"]
    cpu0, flops0 = meter.totals(side, (phase,))
    w0 = time.perf_counter()
    with meter.side(side, phase):
        model = work()
    cpu1, flops1 = meter.totals(side, (phase,))
    memo[key] = {
        "model": copy.deepcopy(model),
        "cpu": cpu1 - cpu0,
        "flops": flops1 - flops0,
        "wall": time.perf_counter() - w0,
    }
    return model, 0.0


def run_cloud_only(ctx: Context) -> MethodRow:
    common, tasks = ctx.common()
    val, val_tasks = ctx.common_val()
    tier = largest_tier(ctx.preset.tiers)
    wire, meter = ctx.wire(), Meter()
    deployed: dict[int, StagedVAE] = {}
    cloud_bytes = 0
    t0 = time.perf_counter()
    with meter.counting():
        for t in range(len(ctx.layout.tasks)):
            edges = ctx.edges_of(t)
            if not edges:
                continue
            with meter.cloud("training"):
                model = build(tier, ctx.ds, ctx.seed + 800 + t)
                recipe = ctx.converging(ctx.recipe(800 + t, tier), ctx.settings.central_epochs)
                task_val = val[val_tasks == t] if recipe.patience else None
                train_vae(model, common[tasks == t], recipe, recipe.epochs, val=task_val)
            cloud_bytes += model_bytes(model)
            for e in edges:
                deployed[e] = _deliver(ctx, wire, meter, e, model, "cloud-only model")
    return _row(
        ctx,
        "cloud_only",
        f"control: per task a {tier}-tier VAE trained on the cloud's common images of the task alone, sent to "
        "the task's edges (no edge data or weights used)",
        {"tier": tier, "epochs": ctx.settings.central_epochs, "patience": ctx.settings.patience},
        wire,
        meter,
        deployed,
        None,
        time.perf_counter() - t0,
        cloud_bytes,
    )


def run_ensemble_distill(ctx: Context, out: Path) -> MethodRow:
    uploads, up_messages, up_compute = _uploads(ctx, out)
    common, tasks = ctx.common()
    val, val_tasks = ctx.common_val()
    wire, meter = ctx.wire(), Meter()
    deployed: dict[int, StagedVAE] = {}
    t0 = time.perf_counter()
    with meter.counting():
        for e in ctx.edges:
            t = ctx.task_of(e)
            teachers = [uploads[k] for k in ctx.edges_of(t)]
            with meter.cloud("distill"):

                @torch.no_grad()
                def target(x: torch.Tensor, teachers: list[StagedVAE] = teachers) -> torch.Tensor:
                    return torch.stack([m.decode(m.encode(x)[0]) for m in teachers]).mean(0)

                student = build(ctx.tier_of(e), ctx.ds, ctx.seed + 1000 * e + 5)
                recipe = ctx.converging(ctx.recipe(1000 * e + 5, ctx.tier_of(e)), ctx.settings.central_epochs)
                task_val = val[val_tasks == t] if recipe.patience else None
                train_vae(
                    student, common[tasks == t], recipe, recipe.epochs, target=target, recon_weight=0.5, val=task_val
                )
            deployed[e] = _deliver(ctx, wire, meter, e, student, "distilled student")
    return _row(
        ctx,
        "ensemble_distill",
        "control: one-shot ensemble distillation of the task's uploads into a learner of each edge's own tier, "
        "in the cloud on the task's common images, sent down once",
        {
            "epochs": ctx.settings.central_epochs,
            "patience": ctx.settings.patience,
            "distill_loss": "0.5*(MSE(x_hat, x) + beta*KL) + 0.5*MSE(x_hat, mean of the uploads' reconstructions)",
        },
        wire,
        meter,
        deployed,
        (up_messages, up_compute),
        time.perf_counter() - t0,
        sum(model_bytes(m) for m in uploads.values()),
    )
