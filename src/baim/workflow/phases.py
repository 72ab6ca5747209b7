"""The workflow's phases that every run goes through, each a function of a
:class:`~baim.workflow.context.Context` returning its JSON record: upload (after each edge
registered its key), screening, BAIM training per strategy, partition, deployment,
personalisation, and the evaluation at the edges."""

from __future__ import annotations

import secrets
from typing import Any, cast

import torch

from ..atomic import write_bytes
from ..cloud import common_data, train_strategy
from ..cloud import partition as cut
from ..cloud.delivery import deliver_all
from ..cloud.door import admit, enrol
from ..cloud.uploads import Expected
from ..edge.node import IDENTITY
from ..errors import WorkflowError
from ..models import BAIM, load_model, save_model
from ..runfiles import source_strategy
from ..signing import SigningError, public_from_hex
from ..transport import Message, encode
from .context import Context, deploy_message, missing_edge, save_npy


def register(ctx: Context, edge: int) -> tuple[str, str]:
    """The edge's public key (``query.info``) and how the cloud believes it
    (:func:`baim.cloud.door.enrol`: registered by the operator, or read from the edge's folder
    in the run directory, on the operator's own disk, where the edges run there)."""
    reply = ctx.request(edge, Message("query.info"), "upload")
    if reply.kind != "info":
        raise WorkflowError(str(reply.meta.get("error", f"unexpected reply {reply.kind!r} to query.info")))
    key = str(reply.meta.get("public_key", ""))
    try:
        public_from_hex(key)
    except SigningError as exc:
        raise WorkflowError(f"edge {edge} registered no usable public key: {exc}") from exc
    return key, enrol(ctx.rd.files.identities, edge, key, ctx.rd.files.edge(edge) / IDENTITY)


def upload(ctx: Context) -> dict:
    """Register each edge, then ask it for its signed upload with a fresh nonce; what screening
    needs to check the signatures (keys, run, nonces) is this phase's result."""
    mark = len(ctx.ledger.messages)
    edges, missing = [], []
    auth: dict[str, Any] = {"run": secrets.token_hex(16), "edges": {}}
    for e in ctx.transport.edges():
        try:
            key, how = register(ctx, e)
        except WorkflowError as exc:
            missing.append({"edge": e, "reason": str(exc)})
            continue
        nonce = secrets.token_hex(16)
        auth["edges"][str(e)] = {"public_key": key, "nonce": nonce, "key_from": how}
        request = Message("train.local", {"run": auth["run"], "nonce": nonce})
        reply = ctx.request(e, request, "upload")
        if reply.kind != "upload":
            missing.append(missing_edge(e, reply))
            continue
        write_bytes(ctx.rd.files.upload(e), encode(reply))
        edges.append(
            {k: reply.meta.get(k) for k in ("edge", "task", "samples")}
            | {"tier": (reply.meta.get("spec") or {}).get("tier"), "metrics": reply.meta.get("metrics")}
        )
    return {"edges": edges, "missing": missing, "bytes": ctx.ledger.totals_since(mark), "auth": auth}


def screening(ctx: Context) -> dict:
    """Every stored upload, checked against what the upload phase sent each edge (its pinned
    key, the round's run id, its nonce) and the data the layout gave it."""
    images, tasks = common_data(ctx.layout, ctx.ds)
    common = {t: images[tasks == t] for t in range(len(ctx.layout.tasks))}
    auth = ctx.rd.result("upload")["auth"]
    expected = {
        int(e): Expected(public_key=a["public_key"], run=auth["run"], nonce=a["nonce"])
        for e, a in auth["edges"].items()
    }
    return admit(
        ctx._uploads(),
        ctx.layout.task_names,
        common,
        ctx.ds.image_size,
        ctx.ds.channels,
        expected=expected,
        assigned={s.edge: len(s.indices) for s in ctx.layout.edges},
        max_samples=len(ctx.ds.train),
    ).report()


def cloud(ctx: Context, strategy: str) -> dict:
    learners, tasks, edges, losses = ctx.first_learners()
    empty = [n for t, n in enumerate(ctx.layout.task_names) if t not in tasks]
    if empty:
        raise WorkflowError(
            f"no accepted upload for tasks {empty}: every task needs at least one learner. "
            f"See {ctx.rd.files.state('screening')} for what was rejected or "
            "quarantined and why."
        )
    result, images = train_strategy(
        learners,
        tasks,
        ctx.layout,
        ctx.ds,
        ctx.p,
        strategy,
        ctx.rd.files.baim(strategy),
        ctx.seed,
        ctx.extractor,
        screening_losses=losses,
        evaluator=ctx.evaluate_baim,
    )
    for task, by_procedure in images.items():
        for procedure, arr in by_procedure.items():
            save_npy(ctx.rd.files.baim_images(strategy, task, procedure), arr)
    result["learner_edges"] = edges
    return result


def partition(ctx: Context) -> dict:
    """Cut the BAIM per task and measure, on real test images, that nothing was lost."""
    strategy = source_strategy(ctx.cfg.strategies)
    baim = load_model(ctx.rd.files.baim(strategy), "baim")
    assert isinstance(baim, BAIM)
    out: dict[str, Any] = {"source_strategy": strategy, "baim_parameters": baim.num_parameters(), "tasks": {}}
    for t, name in enumerate(ctx.layout.task_names):
        compact = cut(baim, t)
        folder = save_model(compact, ctx.rd.files.compact(name))
        x = torch.from_numpy(ctx.ds.test.load(ctx.layout.test[name][:256])).float() / 255
        noise = torch.randn(len(x), baim.latent_dim, generator=torch.Generator().manual_seed(ctx.seed))
        with torch.no_grad():
            a = baim(x, torch.full((len(x),), t, dtype=torch.long), noise=noise).x_hat
            b = compact(x, torch.zeros(len(x), dtype=torch.long), noise=noise).x_hat
            ga = baim.generate(t, 64, torch.Generator().manual_seed(ctx.seed))
            gb = compact.generate(0, 64, torch.Generator().manual_seed(ctx.seed))
        out["tasks"][name] = {
            "parameters": compact.num_parameters(),
            "learners": len(compact.learners),
            "connections": len(compact.connections),
            "bytes": (folder / "weights.safetensors").stat().st_size,
            "max_abs_diff": float(max((a - b).abs().max(), (ga - gb).abs().max())),
        }
    out["max_abs_diff"] = max(v["max_abs_diff"] for v in out["tasks"].values())
    return out


def deployment(ctx: Context) -> dict:
    """Send each edge the model chosen for it within its download budget (:mod:`baim.cloud.delivery`)."""
    mark = len(ctx.ledger.messages)
    done, missing = [], []
    learners, _, accepted, _ = ctx.accepted_learners()
    baim = cast(BAIM, load_model(ctx.baim_folder(0), "baim"))
    plan = deliver_all(ctx.layout, ctx.ds, baim, dict(zip(accepted, learners)), ctx.present(0), ctx.seed)
    for e in ctx.present(0):
        sent = len(ctx.ledger.messages)
        reply = ctx.request(e, deploy_message(plan[e].model), "deployment")
        if reply.kind != "ack":
            missing.append(missing_edge(e, reply))
            continue
        done.append(e)
        plan[e].sent_bytes = ctx.ledger.totals_since(sent)["down"]
    deliveries = {str(e): d.record() for e, d in plan.items()}
    return {"edges": done, "missing": missing, "bytes": ctx.ledger.totals_since(mark), "deliveries": deliveries}


def personalization(ctx: Context) -> dict:
    deployed = ctx.rd.result("deployment")["edges"]
    done, missing = {}, []
    for e in deployed:
        reply = ctx.request(e, Message("train.personalize"), "personalization")
        if reply.kind != "metrics":
            missing.append(missing_edge(e, reply))
            continue
        done[str(e)] = reply.meta["log"]
    return {"edges": done, "missing": missing}


def edge_evaluation(ctx: Context) -> dict:
    mark = len(ctx.ledger.messages)
    # edges deployed to (and personalised) by an integration; the first deployment's are below
    late = {e for e, v in ctx.deployed_versions(ctx.final_version()).items() if v > 0}
    have = {
        "initial": set(ctx.transport.edges()),
        "deployed": set(ctx.rd.result("deployment")["edges"]) | late,
        "personalized": {int(e) for e in ctx.rd.result("personalization")["edges"]} | late,
    }
    rows, missing = [], []
    for e in ctx.transport.edges():
        if e in ctx.cfg.leave:  # gone after uploading: nothing to ask it
            continue
        for which in ctx.evaluated:
            if e not in have[which]:
                continue
            meta = {"model": which, "fid_count": ctx.p.fid_count, "extractor": ctx.extractor}
            reply = ctx.request(e, Message("evaluate", meta), "evaluation")
            if reply.kind != "metrics":
                missing.append(missing_edge(e, reply) | {"model": which})
                continue
            for procedure, arr in reply.tensors.items():
                save_npy(ctx.rd.files.edge_images(e, which, procedure), arr.numpy())
            rows.append(reply.meta)
    for name in ctx.layout.task_names:  # the real images every FID compared with, and the baseline set
        real, baseline = ctx.layout.fid_sets(ctx.ds, name, ctx.p.fid_count)
        save_npy(ctx.rd.files.real_images(name, baseline=True), baseline)
        save_npy(ctx.rd.files.real_images(name), real)
    return {"edges": rows, "missing": missing, "bytes": ctx.ledger.totals_since(mark)}
