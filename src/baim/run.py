"""The workflow, written once against a :class:`~baim.transport.Transport` (DESIGN.md §1, §7).

Phases: layout → local training and upload (each edge, over the transport) → screening →
BAIM training with each strategy → partition (of the finetune BAIM) → deployment →
personalisation → evaluation at the edges → summary, figures and report. Each finished phase
is recorded by :class:`baim.rundir.RunDir`; rerunning resumes at the first unfinished one.
Which engine carries the messages is not this module's business: see :mod:`baim.engines`.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from . import schedule
from .atomic import atomic_write, write_bytes, write_json
from .cloud import common_data, partition, screen_uploads, train_strategy, validate_upload
from .cloud.continual import integrate
from .cloud.pipeline import evaluate_tasks
from .cloud.uploads import Expected
from .config import Preset, RunConfig
from .data import DataSet, load_dataset
from .data.layout import Layout, make_layout
from .edge import EdgeNode
from .errors import WorkflowError
from .learners import StagedVAE
from .models import BAIM, load_model, save_model, to_parts
from .rundir import RunDir
from .runfiles import EDGE_MODELS, source_strategy
from .signing import SigningError, public_from_hex
from .transport import ByteLedger, Message, Transport, encode


def save_npy(path: Path, arr: np.ndarray) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)

    atomic_write(path, _w)


def prepare(out: str | Path, cfg: RunConfig) -> tuple[RunDir, Layout, DataSet, Preset]:
    """Open (or resume) a run directory and make its layout (phase 0, on the cloud)."""
    preset = cfg.resolved_preset()
    ds = load_dataset(cfg.dataset, cfg.data_dir)  # before the folder is claimed: a typo costs nothing
    made = make_layout(ds, preset, seed=cfg.seed, data_dir=cfg.data_dir)  # so does a task name or size
    rd = RunDir(out, cfg.to_dict())

    def do_layout() -> dict:
        made.save(rd.files.layout)
        return {"edges": len(made.edges), "cloud": len(made.cloud)}

    rd.record("layout", do_layout)
    layout = Layout.load(rd.files.layout)
    return rd, layout, ds, layout.settings


def edge_nodes(rd: RunDir, layout: Layout, ds: DataSet, seed: int) -> dict[int, EdgeNode]:
    """Every edge of ``layout`` as an in-process node, working in its place in the run folder
    (``baim run --engine inprocess`` and ``baim compare`` run the edges this way)."""
    return {e.edge: EdgeNode(e.edge, layout, ds, rd.files.edge(e.edge), seed) for e in layout.edges}


def deploy_message(compact: BAIM) -> Message:
    """The message that deploys a compact model to an edge: its manifest and weights."""
    manifest, weights = to_parts(compact)
    return Message("train.deploy", manifest, weights)


def _missing(edge: int, reply: Message) -> dict[str, Any]:
    """The one shape of a missing edge in every phase's result."""
    return {"edge": edge, "reason": str(reply.meta.get("error", f"unexpected reply {reply.kind!r}"))}


Metering = Callable[[str, str], AbstractContextManager[Any]]  # (side, phase) -> what to run the work inside


def unmetered(side: str, phase: str) -> AbstractContextManager[None]:
    return nullcontext()


class Workflow:
    """The phases, written against a transport.

    ``meter(side, phase)`` is entered around the work of every phase on the cloud (``side``
    ``"cloud"``, the phase's name; the BAIM's evaluations as ``"evaluation"``) and around every
    request to an edge (``"edge"``, the request's phase): ``baim compare`` books CPU time and
    FLOPs through it. ``evaluated``: which of each edge's models the evaluation scores."""

    def __init__(
        self,
        rd: RunDir,
        layout: Layout,
        ds: DataSet,
        transport: Transport,
        ledger: ByteLedger,
        cfg: RunConfig,
        timeout: float | None = None,
        meter: Metering = unmetered,
        evaluated: tuple[str, ...] = EDGE_MODELS,
    ):
        self.rd, self.layout, self.ds, self.p = rd, layout, ds, layout.settings
        self.transport, self.ledger, self.cfg = transport, ledger, cfg
        self.timeout = timeout or self.p.timeout_s  # seconds an edge may take to answer one request
        self.seed, self.extractor = cfg.seed, cfg.fid_extractor
        self.meter, self.evaluated = meter, evaluated

    def _phase(self, name: str, fn: Callable[[], Any]) -> Any:
        """Phase ``name``, run (metered) and recorded unless a previous call finished it."""

        def metered() -> Any:
            with self.meter("cloud", name):
                return fn()

        return self.rd.record(name, metered)

    def request(self, edge: int, msg: Message, phase: str) -> Message:
        """One request to an edge, its work metered as the edge's."""
        with self.meter("edge", phase):
            return self.transport.request(edge, msg, self.timeout, phase)

    def run(self) -> dict:
        """Every phase, then the summary and report; resumes where a previous call stopped.
        With ``--schedule async`` the first BAIM is fused from the first quorum of uploads and
        every later one is integrated in a phase of its own (:mod:`baim.schedule`)."""
        self._phase("upload", self.upload)
        self._phase("screening", self.screening)
        arrivals = self._phase("arrivals", self.arrivals)
        for s in self.cfg.strategies:
            self._phase(f"cloud_{s}", partial(self.cloud, s))
        self._phase("partition", self.partition)
        self._phase("deployment", self.deployment)
        self._phase("personalization", self.personalization)
        for k in range(1, len(arrivals["batches"])):
            self._phase(f"integration_{k}", partial(self.integration, k))
        if len(arrivals["batches"]) > 1:
            self._phase("final_baim", self.final_baim)
        self._phase("edge_evaluation", self.edge_evaluation)
        return self._phase("summary", self.summary)

    # -- the lifecycle (baim.schedule) -------------------------------------------------------
    def arrivals(self) -> dict:
        """When each accepted upload arrives (simulated) and which BAIM version it goes into."""
        accepted = self.rd.result("screening")["accepted"]
        late = tuple(e for e in self.cfg.join_late if e in accepted)
        return schedule.plan(self.layout, accepted, self.cfg.schedule, (self.ds.image_size, self.ds.channels), late)

    def present(self, k: int) -> list[int]:
        """Edges that can be deployed to once BAIM version ``k`` exists: not left, and joined."""
        batches = self.rd.result("arrivals")["batches"]
        joined = {e for b in batches[: k + 1] for e in b}
        return [
            e
            for e in self.transport.edges()
            if e not in self.cfg.leave and (e not in self.cfg.join_late or e in joined)
        ]

    def baim_folder(self, version: int) -> Path:
        return self.rd.files.baim(source_strategy(self.cfg.strategies), version)

    def compact_folder(self, version: int, task: str) -> Path:
        return self.rd.files.compact(task, version)

    def deployed_versions(self, k: int) -> dict[int, int]:
        """Which BAIM version each edge holds after phase ``integration_k`` (0: the first deployment)."""
        held = {e: 0 for e in self.rd.result("deployment")["edges"]}
        for j in range(1, k + 1):
            held |= {int(e): j for e in self.rd.result(f"integration_{j}")["deployed"]}
        return held

    def integration(self, k: int) -> dict:
        """BAIM version ``k``: the upload of batch ``k`` joins by continual learning; the touched
        task's compact model is cut (losslessly) and goes to its edges whose models would now lag
        more than the staleness bound, and to an edge that has just joined."""
        batches = self.rd.result("arrivals")["batches"]
        (edge,) = batches[k]
        learners, tasks, edges, _ = self.accepted_learners()
        learner, task = learners[edges.index(edge)], self.layout.task_names[tasks[edges.index(edge)]]
        model = load_model(self.baim_folder(k - 1), "baim")
        assert isinstance(model, BAIM)
        images, cloud_tasks = common_data(self.layout, self.ds)
        curve = {
            name: self.ds.test.load(self.layout.test[name][: self.p.curve_test_per_task or None])
            for name in self.layout.task_names
        }
        names = [self.layout.task_names[t] for t in cloud_tasks]
        report = integrate(model, [(learner, task)], images, names, self.p.cloud, test_sets=curve, seed=self.seed + k)
        save_model(model, self.baim_folder(k))
        t = model.task_names.index(task)
        compact = partition(model, t)
        save_model(compact, self.compact_folder(k, task))
        versions = self.deployed_versions(k - 1)
        task_id = tasks[edges.index(edge)]  # the upload's task, as screening accepted it
        touched_at = [0] + [j for j in range(1, k + 1) if self.layout.edges[batches[j][0]].task == task_id]
        present = self.present(k)
        lag = {
            e: sum(1 for j in touched_at if j > versions[e])
            for e in present
            if self.layout.edges[e].task == task_id and e in versions
        }
        send = schedule.redeploy(lag, self.cfg.staleness)
        if edge in present and edge not in versions:  # just joined: its task's newest model
            send.append(edge)
        cloud_seconds = report["seconds"]
        deployed, missing = [], []
        mark = len(self.ledger.messages)
        message = deploy_message(cast(BAIM, load_model(self.compact_folder(k, task), "compact")))
        t0 = time.perf_counter()
        for e in sorted(send):
            reply = self.request(e, message, "deployment")
            if reply.kind != "ack":
                missing.append(_missing(e, reply))
                continue
            reply = self.request(e, Message("train.personalize"), "personalization")
            if reply.kind != "metrics":
                missing.append(_missing(e, reply))
                continue
            deployed.append(e)
        return {
            "version": k,
            "edge": edge,
            "task": task,
            "deployed": deployed,
            "lag_before": {str(e): v for e, v in sorted(lag.items())},
            "missing": missing,
            "cloud_seconds": cloud_seconds,
            "edge_seconds": round(time.perf_counter() - t0, 3),
            "bytes": self.ledger.totals_since(mark),
            "continual": {k2: v for k2, v in report.items() if k2 != "log"},
            "log": [{k2: v for k2, v in row.items() if k2 != "usage"} for row in report["log"]],
            "compact_bytes": (self.compact_folder(k, task) / "weights.safetensors").stat().st_size,
        }

    def evaluate_baim(self, *args: Any, **kw: Any) -> dict:
        """How the cloud scores a BAIM (:func:`baim.cloud.pipeline.evaluate_tasks`), metered
        apart: ``baim compare`` books the evaluations apart from the training."""
        with self.meter("cloud", "evaluation"):
            return evaluate_tasks(*args, **kw)

    def final_baim(self) -> dict:
        """The last BAIM version, evaluated exactly as the first one was (same test sets, FID
        sampling, extractor and seed), so the schedules compare on their final models."""
        model = load_model(self.baim_folder(self.final_version()), "baim")
        assert isinstance(model, BAIM)
        evals = self.evaluate_baim(model, self.layout, self.ds, self.p, self.extractor, self.seed)
        for task, ev in evals.items():
            for procedure, arr in ev.images.items():
                save_npy(self.rd.files.baim_images("final", task, procedure), arr)
        per_task = {name: ev.metrics for name, ev in evals.items()}
        return {
            "version": self.final_version(),
            "parameters": model.num_parameters(),
            "per_task": per_task,
            "final_test_loss": float(np.mean([v["test_loss"] for v in per_task.values()])),
        }

    def lifecycle(self, strategies: dict, integrations: list[dict]) -> dict:
        """The schedule's settings, which uploads went into which BAIM version, and the final
        BAIM's quality (the first one's with the sync schedule)."""
        arrivals = self.rd.result("arrivals")
        first = strategies[source_strategy(self.cfg.strategies)]
        final = (
            self.rd.result("final_baim")
            if integrations
            else {"version": 0, "per_task": first["per_task"], "final_test_loss": first["final_test_loss"]}
        )
        return {
            "schedule": self.cfg.schedule,
            "staleness": self.cfg.staleness,
            "leave": sorted(self.cfg.leave),
            "join_late": sorted(self.cfg.join_late),
            "finish_s": arrivals["finish_s"],
            "tier_gflops": arrivals["tier_gflops"],
            "batches": arrivals["batches"],
            "deployed_versions": {str(e): v for e, v in sorted(self.deployed_versions(self.final_version()).items())},
            "integrations": [
                {k: i[k] for k in ("version", "edge", "task", "deployed", "lag_before", "compact_bytes", "missing")}
                | {
                    k: i["continual"][k]
                    for k in (
                        "untouched_tasks",
                        "untouched_max_abs_diff",
                        "test_loss_before",
                        "test_loss_after",
                        "parameters_before",
                        "parameters_after",
                        "trained_parameters",
                    )
                }
                for i in integrations
            ],
            "final": final,
        }

    def final_version(self) -> int:
        return len(self.rd.result("arrivals")["batches"]) - 1

    # -- phases 1-2: local training on each edge, then one upload each ---------------------
    def register(self, edge: int) -> str:
        """The edge's public key, pinned in ``cloud/identities.json`` the first time it is
        seen (``query.info``); an edge that later presents another key is refused."""
        path = self.rd.files.identities
        pinned = json.loads(path.read_text()) if path.is_file() else {}
        reply = self.request(edge, Message("query.info"), "upload")
        if reply.kind != "info":
            raise WorkflowError(str(reply.meta.get("error", f"unexpected reply {reply.kind!r} to query.info")))
        key = str(reply.meta.get("public_key", ""))
        try:
            public_from_hex(key)
        except SigningError as exc:
            raise WorkflowError(f"edge {edge} registered no usable public key: {exc}") from exc
        if pinned.get(str(edge), key) != key:
            raise WorkflowError(f"edge {edge} presents a different key from the one it registered: refused")
        if str(edge) not in pinned:
            write_json(path, pinned | {str(edge): key})
        return key

    def upload(self) -> dict:
        """Register each edge, then ask it for its signed upload with a fresh nonce; what screening
        needs to check the signatures (keys, run, nonces) is this phase's result."""
        mark = len(self.ledger.messages)
        edges, missing = [], []
        auth: dict[str, Any] = {"run": secrets.token_hex(16), "edges": {}}
        for e in self.transport.edges():
            try:
                key = self.register(e)
            except WorkflowError as exc:
                missing.append({"edge": e, "reason": str(exc)})
                continue
            nonce = secrets.token_hex(16)
            auth["edges"][str(e)] = {"public_key": key, "nonce": nonce}
            request = Message("train.local", {"run": auth["run"], "nonce": nonce})
            reply = self.request(e, request, "upload")
            if reply.kind != "upload":
                missing.append(_missing(e, reply))
                continue
            write_bytes(self.rd.files.upload(e), encode(reply))
            edges.append(
                {k: reply.meta.get(k) for k in ("edge", "task", "samples")}
                | {"tier": (reply.meta.get("spec") or {}).get("tier"), "metrics": reply.meta.get("metrics")}
            )
        return {"edges": edges, "missing": missing, "bytes": self.ledger.totals_since(mark), "auth": auth}

    def _uploads(self) -> dict[int, bytes]:
        return {e: f.read_bytes() for e, f in self.rd.files.uploads().items()}

    # -- phase 3 ------------------------------------------------------------------------
    def screening(self) -> dict:
        """Every stored upload, checked against what the upload phase sent each edge (its pinned
        key, the round's run id, its nonce) and the data the layout gave it."""
        images, tasks = common_data(self.layout, self.ds)
        common = {t: images[tasks == t] for t in range(len(self.layout.tasks))}
        auth = self.rd.result("upload")["auth"]
        expected = {
            int(e): Expected(public_key=a["public_key"], run=auth["run"], nonce=a["nonce"])
            for e, a in auth["edges"].items()
        }
        return screen_uploads(
            self._uploads(),
            self.layout.task_names,
            common,
            self.ds.image_size,
            self.ds.channels,
            expected=expected,
            assigned={s.edge: len(s.indices) for s in self.layout.edges},
            max_samples=len(self.ds.train),
        ).report()

    def first_learners(self) -> tuple[list[StagedVAE], list[int], list[int], list[float]]:
        """The accepted learners of the first fusion (all of them with the sync schedule)."""
        first = set(self.rd.result("arrivals")["batches"][0])
        learners, tasks, edges, losses = self.accepted_learners()
        keep = [i for i, e in enumerate(edges) if e in first]
        return (
            [learners[i] for i in keep],
            [tasks[i] for i in keep],
            [edges[i] for i in keep],
            [losses[i] for i in keep],
        )

    def accepted_learners(self) -> tuple[list[StagedVAE], list[int], list[int], list[float]]:
        """The learners screening accepted, their tasks, edges and screening losses (re-validated
        from disk)."""
        screened = self.rd.result("screening")
        accepted = screened["accepted"]
        uploads = self._uploads()
        learners, tasks = [], []
        for e in accepted:
            model, meta = validate_upload(uploads[e], self.layout.task_names, self.ds.image_size, self.ds.channels)
            learners.append(model)
            tasks.append(self.layout.task_names.index(meta["task"]))
        return learners, tasks, accepted, [screened["scores"][str(e)] for e in accepted]

    # -- phase 4 ------------------------------------------------------------------------
    def cloud(self, strategy: str) -> dict:
        learners, tasks, edges, losses = self.first_learners()
        empty = [n for t, n in enumerate(self.layout.task_names) if t not in tasks]
        if empty:
            raise WorkflowError(
                f"no accepted upload for tasks {empty}: every task needs at least one learner. "
                f"See {self.rd.files.state('screening')} for what was rejected or "
                "quarantined and why."
            )
        result, images = train_strategy(
            learners,
            tasks,
            self.layout,
            self.ds,
            self.p,
            strategy,
            self.rd.files.baim(strategy),
            self.seed,
            self.extractor,
            screening_losses=losses,
            evaluator=self.evaluate_baim,
        )
        for task, by_procedure in images.items():
            for procedure, arr in by_procedure.items():
                save_npy(self.rd.files.baim_images(strategy, task, procedure), arr)
        result["learner_edges"] = edges
        return result

    # -- phase 5 ------------------------------------------------------------------------
    def partition(self) -> dict:
        """Cut the BAIM per task and measure, on real test images, that nothing was lost."""
        strategy = source_strategy(self.cfg.strategies)
        baim = load_model(self.rd.files.baim(strategy), "baim")
        assert isinstance(baim, BAIM)
        out: dict[str, Any] = {"source_strategy": strategy, "baim_parameters": baim.num_parameters(), "tasks": {}}
        for t, name in enumerate(self.layout.task_names):
            compact = partition(baim, t)
            folder = save_model(compact, self.rd.files.compact(name))
            x = torch.from_numpy(self.ds.test.load(self.layout.test[name][:256])).float() / 255
            noise = torch.randn(len(x), baim.latent_dim, generator=torch.Generator().manual_seed(self.seed))
            with torch.no_grad():
                a = baim(x, torch.full((len(x),), t, dtype=torch.long), noise=noise).x_hat
                b = compact(x, torch.zeros(len(x), dtype=torch.long), noise=noise).x_hat
                ga = baim.generate(t, 64, torch.Generator().manual_seed(self.seed))
                gb = compact.generate(0, 64, torch.Generator().manual_seed(self.seed))
            out["tasks"][name] = {
                "parameters": compact.num_parameters(),
                "learners": len(compact.learners),
                "connections": len(compact.connections),
                "bytes": (folder / "weights.safetensors").stat().st_size,
                "max_abs_diff": float(max((a - b).abs().max(), (ga - gb).abs().max())),
            }
        out["max_abs_diff"] = max(v["max_abs_diff"] for v in out["tasks"].values())
        return out

    # -- phases 6-7 ----------------------------------------------------------------------
    def deployment(self) -> dict:
        mark = len(self.ledger.messages)
        done, missing = [], []
        for e in self.present(0):
            task = self.layout.task_names[self.layout.edges[e].task]
            message = deploy_message(cast(BAIM, load_model(self.rd.files.compact(task), "compact")))
            reply = self.request(e, message, "deployment")
            if reply.kind != "ack":
                missing.append(_missing(e, reply))
                continue
            done.append(e)
        return {"edges": done, "missing": missing, "bytes": self.ledger.totals_since(mark)}

    def personalization(self) -> dict:
        deployed = self.rd.result("deployment")["edges"]
        done, missing = {}, []
        for e in deployed:
            reply = self.request(e, Message("train.personalize"), "personalization")
            if reply.kind != "metrics":
                missing.append(_missing(e, reply))
                continue
            done[str(e)] = reply.meta["log"]
        return {"edges": done, "missing": missing}

    # -- evaluation at the edges -----------------------------------------------------------
    def edge_evaluation(self) -> dict:
        mark = len(self.ledger.messages)
        # edges deployed to (and personalised) by an integration; the first deployment's are below
        late = {e for e, v in self.deployed_versions(self.final_version()).items() if v > 0}
        have = {
            "initial": set(self.transport.edges()),
            "deployed": set(self.rd.result("deployment")["edges"]) | late,
            "personalized": {int(e) for e in self.rd.result("personalization")["edges"]} | late,
        }
        rows, missing = [], []
        for e in self.transport.edges():
            if e in self.cfg.leave:  # gone after uploading: nothing to ask it
                continue
            for which in self.evaluated:
                if e not in have[which]:
                    continue
                meta = {"model": which, "fid_count": self.p.fid_count, "extractor": self.extractor}
                reply = self.request(e, Message("evaluate", meta), "evaluation")
                if reply.kind != "metrics":
                    missing.append(_missing(e, reply) | {"model": which})
                    continue
                for procedure, arr in reply.tensors.items():
                    save_npy(self.rd.files.edge_images(e, which, procedure), arr.numpy())
                rows.append(reply.meta)
        for name in self.layout.task_names:  # the real images every FID compared with, and the baseline set
            real, baseline = self.layout.fid_sets(self.ds, name, self.p.fid_count)
            save_npy(self.rd.files.real_images(name, baseline=True), baseline)
            save_npy(self.rd.files.real_images(name), real)
        return {"edges": rows, "missing": missing, "bytes": self.ledger.totals_since(mark)}

    # -- summary ------------------------------------------------------------------------
    def summary(self) -> dict:
        rd = self.rd
        up = rd.result("upload")
        evaluation = rd.result("edge_evaluation")
        deployment = rd.result("deployment")
        personalization = rd.result("personalization")
        integrations = [rd.result(f"integration_{k}") for k in range(1, self.final_version() + 1)]
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
            }
            for u in up["edges"]
        ]
        strategies = {}
        for s in self.cfg.strategies:
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
            "preset": self.p.name,
            "cloud_recipe": self.cfg.cloud_recipe,
            "recipes": {
                "cloud": asdict(self.p.cloud),
                "personalize": asdict(self.p.personalize),
                "gate_init_from_screening": self.p.gate_init_from_screening,
            },
            "engine": self.cfg.engine,
            "dataset": self.ds.name,
            "seed": self.seed,
            "wall_seconds": round(sum(seconds.values()), 2),
            "phase_seconds": seconds,
            "fid_extractor": self.extractor,
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
            "lifecycle": self.lifecycle(strategies, integrations),
            "timeline": schedule.timeline(
                self.layout,
                rd.result("arrivals"),
                seconds,
                deployment["edges"],
                integrations,
                tuple(self.cfg.leave),
                source_strategy(self.cfg.strategies),
            ),
            "missing": {
                "upload": up["missing"],
                "deployment": deployment["missing"],
                "personalization": personalization["missing"],
                "evaluation": evaluation["missing"],
            },
        }
        write_json(rd.files.summary, summary)
        from .report import write_report

        write_report(rd.root, summary, self.layout.task_names)
        return summary
