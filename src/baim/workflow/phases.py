"""The workflow's phases that every run goes through, each a function of a
:class:`~baim.workflow.context.Context` returning its typed record
(:mod:`baim.workflow.results`): upload (after each edge registered its key), screening, BAIM
training per strategy, partition, deployment, personalisation, and the evaluation at the
edges. The screening and cloud phases' work (:func:`screen`, :func:`train`) takes its inputs
explicitly, so ``baim cloud train`` runs it too, outside any run folder."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..atomic import write_bytes
from ..cloud import common_data, train_strategy
from ..cloud import partition as cut
from ..cloud.delivery import deliver_all
from ..cloud.door import NO_WAIVERS, Waivers, admit, enrol
from ..cloud.pipeline import evaluate_tasks
from ..cloud.uploads import Expected
from ..config import Preset
from ..data import DataSet
from ..data.layout import Layout
from ..edge.node import IDENTITY
from ..errors import WorkflowError
from ..models import BAIM, Evaluation, load_model, save_model
from ..runfiles import source_strategy
from ..signing import SigningError, public_from_hex
from ..transport import Message, encode
from .context import Context, Learners, deploy_message, missing_edge, save_npy
from .results import (
    Bytes,
    CloudTraining,
    CompactTask,
    Deployment,
    EdgeAuth,
    EdgeEvaluation,
    MissingEdge,
    Partition,
    Personalization,
    Screening,
    Upload,
    UploadAuth,
    UploadedEdge,
)


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


def upload(ctx: Context) -> Upload:
    """Register each edge, then ask it for its signed upload with a fresh nonce; what screening
    needs to check the signatures (keys, run, nonces) is this phase's result."""
    mark = len(ctx.ledger.messages)
    edges: list[UploadedEdge] = []
    missing: list[MissingEdge] = []
    run, auth = secrets.token_hex(16), {}
    for e in ctx.transport.edges():
        try:
            key, how = register(ctx, e)
        except WorkflowError as exc:
            missing.append(MissingEdge(e, str(exc)))
            continue
        nonce = secrets.token_hex(16)
        auth[str(e)] = EdgeAuth(public_key=key, nonce=nonce, key_from=how)
        request = Message("train.local", {"run": run, "nonce": nonce})
        reply = ctx.request(e, request, "upload")
        if reply.kind != "upload":
            missing.append(missing_edge(e, reply))
            continue
        write_bytes(ctx.rd.files.upload(e), encode(reply))
        meta = reply.meta  # as the edge sent it; screening checks it
        spec = meta.get("spec") or {}
        fields = {k: meta.get(k) for k in ("edge", "task", "samples")}
        edges.append(UploadedEdge.from_json(fields | {"tier": spec.get("tier"), "metrics": meta.get("metrics")}))
    return Upload(tuple(edges), tuple(missing), Bytes(**ctx.ledger.totals_since(mark)), UploadAuth(run, auth))


def screen(
    layout: Layout,
    ds: DataSet,
    uploads: dict[int, bytes],
    *,
    expected: dict[int, Expected] | None = None,
    keys: dict[int, str] | None = None,
    waivers: Waivers = NO_WAIVERS,
    assigned: dict[int, int] | None = None,
    max_samples: int | None = None,
) -> Screening:
    """The screening phase's work (also ``baim cloud train``'s): every upload through the door
    (:func:`baim.cloud.door.admit`: its signature checked against the round's ``expected`` keys
    or the operator's registered ``keys``, then screened on the cloud's common images of its
    task), with the checks the caller can make and the waivers the operator gave."""
    images, tasks = common_data(layout, ds)
    common = {t: images[tasks == t] for t in range(len(layout.tasks))}
    admitted = admit(
        uploads,
        layout.task_names,
        common,
        ds.image_size,
        ds.channels,
        expected=expected,
        keys=keys,
        waivers=waivers,
        assigned=assigned,
        max_samples=max_samples,
    )
    return Screening.from_json(admitted.report())


def screening(ctx: Context) -> Screening:
    """Every stored upload, checked against what the upload phase sent each edge (its pinned
    key, the round's run id, its nonce) and the data the layout gave it."""
    auth = ctx.rd.result("upload", Upload).auth
    return screen(
        ctx.layout,
        ctx.ds,
        ctx.uploads(),
        expected={
            int(e): Expected(public_key=a.public_key, run=auth.run, nonce=a.nonce) for e, a in auth.edges.items()
        },
        assigned={s.edge: len(s.indices) for s in ctx.layout.edges},
        max_samples=len(ctx.ds.train),
    )


def train(
    first: Learners,
    layout: Layout,
    ds: DataSet,
    preset: Preset,
    strategy: str,
    out: str | Path,
    seed: int,
    extractor: str,
    evaluator: Callable[..., dict[str, Evaluation]] = evaluate_tasks,
    screening_record: Path | None = None,
) -> tuple[CloudTraining, dict[str, dict[str, np.ndarray]]]:
    """The cloud phase's work (also ``baim cloud train``'s): fuse the accepted learners into a
    BAIM with ``strategy``, train and evaluate it, save it in ``out``; its record and the
    images its evaluation generated. Every task needs a learner (``screening_record``: where
    the caller keeps what screening rejected, to point at)."""
    empty = [n for t, n in enumerate(layout.task_names) if t not in first.tasks]
    if empty:
        where = f"See {screening_record} for" if screening_record else "Screening's report says"
        raise WorkflowError(
            f"no accepted upload for tasks {empty}: every task needs at least one learner. "
            f"{where} what was rejected or quarantined and why."
        )
    result, images = train_strategy(
        first.learners,
        first.tasks,
        layout,
        ds,
        preset,
        strategy,
        out,
        seed,
        extractor,
        screening_losses=first.losses,
        evaluator=evaluator,
    )
    return CloudTraining.from_json(result | {"learner_edges": first.edges}), images


def cloud(ctx: Context, strategy: str) -> CloudTraining:
    """The first BAIM with ``strategy`` (from the learners of the first fusion), its evaluation
    images saved beside it."""
    result, images = train(
        ctx.first_learners(),
        ctx.layout,
        ctx.ds,
        ctx.p,
        strategy,
        ctx.rd.files.baim(strategy),
        ctx.seed,
        ctx.extractor,
        evaluator=ctx.evaluate_baim,
        screening_record=ctx.rd.files.state("screening"),
    )
    for task, by_procedure in images.items():
        for procedure, arr in by_procedure.items():
            save_npy(ctx.rd.files.baim_images(strategy, task, procedure), arr)
    return result


def partition(ctx: Context) -> Partition:
    """Cut the BAIM per task and measure, on real test images, that nothing was lost."""
    strategy = source_strategy(ctx.cfg.strategies)
    baim = load_model(ctx.rd.files.baim(strategy), "baim")
    assert isinstance(baim, BAIM)
    tasks: dict[str, CompactTask] = {}
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
        tasks[name] = CompactTask(
            parameters=compact.num_parameters(),
            learners=len(compact.learners),
            connections=len(compact.connections),
            bytes=(folder / "weights.safetensors").stat().st_size,
            max_abs_diff=float(max((a - b).abs().max(), (ga - gb).abs().max())),
        )
    return Partition(strategy, baim.num_parameters(), tasks, max(v.max_abs_diff for v in tasks.values()))


def deployment(ctx: Context) -> Deployment:
    """Send each present edge the model chosen for it within its download budget
    (:mod:`baim.cloud.delivery`)."""
    mark = len(ctx.ledger.messages)
    done: list[int] = []
    missing: list[MissingEdge] = []
    accepted = ctx.accepted_learners()
    baim = cast(BAIM, load_model(ctx.baim_folder(0), "baim"))
    plan = deliver_all(ctx.layout, ctx.ds, baim, dict(zip(accepted.edges, accepted.learners)), ctx.present(0), ctx.seed)
    for e in ctx.present(0):
        sent = len(ctx.ledger.messages)
        reply = ctx.request(e, deploy_message(plan[e].model), "deployment")
        if reply.kind != "ack":
            missing.append(missing_edge(e, reply))
            continue
        done.append(e)
        plan[e].sent_bytes = ctx.ledger.totals_since(sent)["down"]
    deliveries = {str(e): d.record() for e, d in plan.items()}
    return Deployment(tuple(done), tuple(missing), Bytes(**ctx.ledger.totals_since(mark)), deliveries)


def personalization(ctx: Context) -> Personalization:
    """Each deployed edge fine-tunes its compact model on its own data."""
    deployed = ctx.rd.result("deployment", Deployment).edges
    done: dict[str, Any] = {}
    kept: dict[str, Any] = {}
    missing: list[MissingEdge] = []
    for e in deployed:
        reply = ctx.request(e, Message("train.personalize"), "personalization")
        if reply.kind != "metrics":
            missing.append(missing_edge(e, reply))
            continue
        done[str(e)] = reply.meta["log"]
        if "kept" in reply.meta:
            kept[str(e)] = reply.meta["kept"]
    return Personalization(done, tuple(missing), kept)


def edge_evaluation(ctx: Context) -> EdgeEvaluation:
    """Each edge scores its models (initial, deployed, personalised) on its test data."""
    mark = len(ctx.ledger.messages)
    # edges deployed to (and personalised) by an integration; the first deployment's are below
    late = {e for e, v in ctx.deployed_versions(ctx.final_version()).items() if v > 0}
    have = {
        "initial": set(ctx.transport.edges()),
        "deployed": set(ctx.rd.result("deployment", Deployment).edges) | late,
        "personalized": {int(e) for e in ctx.rd.result("personalization", Personalization).edges} | late,
    }
    rows: list[dict[str, Any]] = []
    missing: list[MissingEdge] = []
    for e in ctx.transport.edges():
        if e in ctx.cfg.leave:  # gone after uploading: nothing to ask it
            continue
        for which in ctx.evaluated:
            if e not in have[which]:
                continue
            meta = {"model": which, "fid_count": ctx.p.fid_count, "extractor": ctx.extractor}
            reply = ctx.request(e, Message("evaluate", meta), "evaluation")
            if reply.kind != "metrics":
                missing.append(missing_edge(e, reply, which))
                continue
            for procedure, arr in reply.tensors.items():
                save_npy(ctx.rd.files.edge_images(e, which, procedure), arr.numpy())
            rows.append(reply.meta)
    for name in ctx.layout.task_names:  # the real images every FID compared with, and the baseline set
        real, baseline = ctx.layout.fid_sets(ctx.ds, name, ctx.p.fid_count)
        save_npy(ctx.rd.files.real_images(name, baseline=True), baseline)
        save_npy(ctx.rd.files.real_images(name), real)
    return EdgeEvaluation(tuple(rows), tuple(missing), Bytes(**ctx.ledger.totals_since(mark)))
