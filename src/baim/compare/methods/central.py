"""``central`` and ``kd``: raw training images go to the cloud.

- ``central``: every edge sends its slice (uint8 images, the codec's ``data.upload``); the cloud
  trains one model per task, of the largest tier (early-stopped on the cloud's validation part of
  the task's common data when the settings converge), on the task's pooled images (the edges' slices
  and its own common images of the task) with the edges' recipe, and serves generation itself:
  an edge's request costs one round trip (request up, 16 images down).
- ``kd`` (Table I's knowledge distillation): the same raw upload and the same cloud teacher per
  task; each edge then receives a student of its own tier, distilled in the cloud on the task's
  pooled images (loss = ½·(MSE to the image + β·KL) + ½·MSE to the teacher's reconstruction).

The teacher is the same computation in both (same code, data and seed): when ``central`` ran
first, ``kd`` reuses its trained teachers and counts their measured cost as its own.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np
import torch

from ...data import to_uint8
from ...learners import StagedVAE
from ...models import generate, model_from, to_parts
from ...models.evaluation import learner_prior
from ...transport import Message
from ..common import FID_SAMPLING, Context, build, largest_tier, train_vae
from ..measure import Meter, Wire, latency_ms, model_bytes
from ..row import MethodRow, method_row


def raw_upload(ctx: Context, wire: Wire, meter: Meter) -> dict[int, np.ndarray]:
    """Every edge's slice to the cloud; returns the cloud's pooled images per task."""
    images, tasks = ctx.common()
    pooled: dict[int, list[np.ndarray]] = {t: [images[tasks == t]] for t in range(len(ctx.layout.tasks))}
    for e in ctx.edges:
        with meter.edge("upload"):
            x = ctx.local_images(e)
            msg = Message("data.upload", {"edge": e, "task": ctx.task_of(e)}, {"images": torch.from_numpy(x)})
        got = wire.up(e, msg, "upload", raw_data=x.nbytes)
        with meter.cloud("upload"):
            pooled[int(got.meta["task"])].append(got.tensors["images"].numpy())
    return {t: np.concatenate(v) for t, v in pooled.items()}


def teachers(ctx: Context, meter: Meter, pooled: dict[int, np.ndarray]) -> dict[int, Any]:
    """One model per task of the largest tier on the task's pooled images (cached in ctx)."""
    if "teachers" in ctx.cache:
        cached = ctx.cache["teachers"]
        meter.cpu[("cloud", "teacher")] += cached["cpu"]
        meter.flops[("cloud", "teacher")] += cached["flops"]
        ctx.cache["teacher_wall_reused"] = cached["wall"]
        return dict(cached["models"])
    tier = largest_tier(ctx.preset.tiers)
    val, val_tasks = ctx.common_val()
    models = {}
    w0 = time.perf_counter()
    cpu0, flops0 = meter.totals("cloud", ("teacher",))
    for t, x in pooled.items():
        with meter.cloud("teacher"):
            model = build(tier, ctx.ds, ctx.seed + 500 + t)
            recipe = ctx.converging(ctx.recipe(500 + t, tier), ctx.settings.central_epochs)
            train_vae(model, x, recipe, recipe.epochs, val=val[val_tasks == t] if recipe.patience else None)
        models[t] = model
    cpu1, flops1 = meter.totals("cloud", ("teacher",))
    ctx.cache["teachers"] = {
        "models": models,
        "cpu": cpu1 - cpu0,
        "flops": flops1 - flops0,
        "tier": tier,
        "wall": time.perf_counter() - w0,
    }
    return models


def _rows_from_task_models(ctx: Context, models: dict[int, Any], pooled: dict[int, np.ndarray]) -> list[dict]:
    """Each task's cloud model scored once (its fitted prior from its own training images, the
    pooled ones), then listed for every edge of the task."""
    rows = []
    for t, model in models.items():
        edges = ctx.edges_of(t)
        if not edges:
            continue
        r = ctx.evaluate_edge(edges[0], model, prior_images=pooled[t])
        # own test sets and validation parts differ per edge
        rows += [r | {"edge": e, "val_loss": ctx.val_loss(e, model)} | ctx.own_quality(e, model) for e in edges]
    return sorted(rows, key=lambda r: r["edge"])


def run_central(ctx: Context) -> MethodRow:
    wire, meter = ctx.wire(), Meter()
    t0 = time.perf_counter()
    with meter.counting():
        pooled = raw_upload(ctx, wire, meter)
        models = teachers(ctx, meter, pooled)
    wall = time.perf_counter() - t0
    ctx.cache.setdefault("wires", {})["central"] = wire

    # serving: the edge asks, the cloud generates 16 images from the task's fitted prior, sends them down
    priors = {t: learner_prior(m, pooled[t], ctx.seed) for t, m in models.items()}
    lat, inference_bytes = [], 0
    for e in ctx.edges:
        t = ctx.task_of(e)
        mark = len(wire.ledger.messages)

        def serve(e: int = e, t: int = t) -> None:
            req = wire.up(e, Message("generate", {"task": ctx.layout.task_names[t], "n": 16}), "inference")
            with torch.no_grad():
                x = generate(models[t], int(req.meta["n"]), ctx.seed, prior=priors[t])
            wire.down(e, Message("images", {}, {"images": torch.from_numpy(to_uint8(x))}), "inference")

        lat.append(latency_ms(serve))
        inference_bytes = sum(m["bytes"] for m in wire.ledger.messages[mark : mark + 2])
    return method_row(
        "central",
        "edges send their raw slices to the cloud; the cloud trains one model per task "
        f"({ctx.cache['teachers']['tier']} tier) on the pooled images and serves generation",
        {
            "tier": ctx.cache["teachers"]["tier"],
            "epochs": ctx.settings.central_epochs,
            "patience": ctx.settings.patience,
        },
        messages=wire.ledger.messages,
        raw_data_bytes=wire.raw_data_bytes,
        compute=meter,
        storage=(0, wire.raw_data_bytes + sum(model_bytes(m) for m in models.values())),
        latency_ms=lat,
        round_trips=1,
        wall_s=wall,
        per_edge=_rows_from_task_models(ctx, models, pooled),
        inference_bytes_per_request=inference_bytes,
        fid_sampling=FID_SAMPLING + " (prior fitted in the cloud on the task's pooled training images)",
    )


def run_kd(ctx: Context) -> MethodRow:
    wire, meter = ctx.wire(), Meter()
    t0 = time.perf_counter()
    students: dict[int, StagedVAE] = {}
    val, val_tasks = ctx.common_val()
    w = ctx.settings.kd_weight
    with meter.counting():
        pooled = raw_upload(ctx, wire, meter)
        models = teachers(ctx, meter, pooled)
        for e in ctx.edges:
            t = ctx.task_of(e)
            with meter.cloud("distill"):
                teacher = models[t]
                student = build(ctx.tier_of(e), ctx.ds, ctx.seed + 1000 * e + 1)
                recipe = ctx.converging(ctx.recipe(1000 * e + 1, ctx.tier_of(e)), ctx.settings.central_epochs)
                task_val = val[val_tasks == t] if recipe.patience else None

                @torch.no_grad()
                def target(x: torch.Tensor, teacher: Any = teacher) -> torch.Tensor:
                    return teacher.decode(teacher.encode(x)[0])

                train_vae(student, pooled[t], recipe, recipe.epochs, target=target, recon_weight=1 - w, val=task_val)
                manifest, state = to_parts(student)
            got = wire.down(e, Message("deploy", manifest, state), "deployment")
            with meter.edge("deployment"):
                received = model_from(got.meta, got.tensors, f"kd student for edge {e}", "learner")
                assert isinstance(received, StagedVAE)
                students[e] = received
    wall = time.perf_counter() - t0 + ctx.cache.pop("teacher_wall_reused", 0.0)
    ctx.cache.setdefault("wires", {})["kd"] = wire
    lat, rows = [], []
    for e, s in students.items():
        prior = learner_prior(s, ctx.local_images(e), ctx.seed)  # fitted on the edge, like every edge model
        lat.append(latency_ms(partial(generate, s, 16, ctx.seed, prior=prior)))
        rows.append(ctx.evaluate_edge(e, s))
    return method_row(
        "kd",
        "raw slices to the cloud; a teacher per task "
        f"({ctx.cache['teachers']['tier']} tier) trained there; each edge receives a student of its own "
        "tier distilled from it in the cloud",
        {
            "teacher_tier": ctx.cache["teachers"]["tier"],
            "epochs": ctx.settings.central_epochs,
            "patience": ctx.settings.patience,
            "kd_weight": w,
            "distill_loss": f"{1 - w:g}*(MSE(x_hat, x) + beta*KL) + {w:g}*MSE(x_hat, teacher reconstruction)",
        },
        messages=wire.ledger.messages,
        raw_data_bytes=wire.raw_data_bytes,
        compute=meter,
        storage=(
            sum(model_bytes(s) for s in students.values()),
            wire.raw_data_bytes + sum(model_bytes(m) for m in models.values()),
        ),
        latency_ms=lat,
        round_trips=0,
        wall_s=wall,
        per_edge=rows,
    )
