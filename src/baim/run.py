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
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write, write_bytes, write_json
from .cloud import common_data, partition, screen_uploads, train_strategy, validate_upload
from .cloud.uploads import Expected
from .config import Preset, RunConfig
from .data import DataSet, load_dataset
from .data.layout import Layout, make_layout
from .errors import WorkflowError
from .learners import StagedVAE
from .models import BAIM, load_model, save_model, to_parts
from .rundir import RunDir
from .signing import SigningError, public_from_hex
from .transport import ByteLedger, Message, Transport, encode

EDGE_MODELS = ("initial", "deployed", "personalized")


def save_npy(path: Path, arr: np.ndarray) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)

    atomic_write(path, _w)


def prepare(out: str | Path, cfg: RunConfig) -> tuple[RunDir, Layout, DataSet, Preset]:
    """Open (or resume) a run directory and make its layout (phase 0, on the cloud)."""
    preset = cfg.resolved_preset()
    ds = load_dataset(cfg.dataset, cfg.data_dir)  # before the folder is claimed: a typo costs nothing
    rd = RunDir(out, cfg.to_dict())

    def do_layout() -> dict:
        layout = make_layout(ds, preset, seed=cfg.seed, data_dir=cfg.data_dir)
        layout.save(rd.path("layout.json"))
        return {"edges": len(layout.edges), "cloud": len(layout.cloud)}

    rd.phase("layout", do_layout)
    layout = Layout.load(rd.path("layout.json"))
    return rd, layout, ds, layout.settings


def source_strategy(strategies: tuple[str, ...]) -> str:
    """The BAIM that is partitioned and deployed: finetune's (the paper's), if it was trained."""
    return "finetune" if "finetune" in strategies else strategies[0]


def _missing(edge: int, reply: Message) -> dict[str, Any]:
    """The one shape of a missing edge in every phase's result."""
    return {"edge": edge, "reason": str(reply.meta.get("error", f"unexpected reply {reply.kind!r}"))}


class Workflow:
    """The phases, written against a transport."""

    def __init__(
        self,
        rd: RunDir,
        layout: Layout,
        ds: DataSet,
        transport: Transport,
        ledger: ByteLedger,
        cfg: RunConfig,
        timeout: float | None = None,
    ):
        self.rd, self.layout, self.ds, self.p = rd, layout, ds, layout.settings
        self.transport, self.ledger, self.cfg = transport, ledger, cfg
        self.timeout = timeout or self.p.timeout_s  # seconds an edge may take to answer one request
        self.seed, self.extractor = cfg.seed, cfg.fid_extractor

    def run(self) -> dict:
        """Every phase, then the summary and report; resumes where a previous call stopped."""
        self.rd.phase("upload", self.upload)
        self.rd.phase("screening", self.screening)
        for s in self.cfg.strategies:
            self.rd.phase(f"cloud_{s}", partial(self.cloud, s))
        self.rd.phase("partition", self.partition)
        self.rd.phase("deployment", self.deployment)
        self.rd.phase("personalization", self.personalization)
        self.rd.phase("edge_evaluation", self.edge_evaluation)
        return self.rd.phase("summary", self.summary)

    # -- phases 1-2: local training on each edge, then one upload each ---------------------
    def register(self, edge: int) -> str:
        """The edge's public key, pinned in ``cloud/identities.json`` the first time it is
        seen (``query.info``); an edge that later presents another key is refused."""
        path = self.rd.path("cloud", "identities.json")
        pinned = json.loads(path.read_text()) if path.is_file() else {}
        reply = self.transport.request(edge, Message("query.info"), self.timeout, "upload")
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
            reply = self.transport.request(e, request, self.timeout, "upload")
            if reply.kind != "upload":
                missing.append(_missing(e, reply))
                continue
            write_bytes(self.rd.path("cloud", "uploads", f"edge-{e}.msg"), encode(reply))
            edges.append(
                {k: reply.meta.get(k) for k in ("edge", "task", "samples")}
                | {"tier": (reply.meta.get("spec") or {}).get("tier"), "metrics": reply.meta.get("metrics")}
            )
        return {"edges": edges, "missing": missing, "bytes": self.ledger.totals_since(mark), "auth": auth}

    def _uploads(self) -> dict[int, bytes]:
        return {
            int(f.stem.split("-")[1]): f.read_bytes()
            for f in sorted(self.rd.path("cloud", "uploads").glob("edge-*.msg"))
        }

    # -- phase 3 ------------------------------------------------------------------------
    def screening(self) -> dict:
        """Every stored upload, checked against what the upload phase sent each edge (its pinned
        key, the round's run id, its nonce) and the data the layout gave it."""
        images, tasks = common_data(self.layout, self.ds)
        common = {t: images[tasks == t] for t in range(len(self.layout.tasks))}
        auth = self.rd.phase("upload", self.upload)["auth"]
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

    def accepted_learners(self) -> tuple[list[StagedVAE], list[int], list[int], list[float]]:
        """The learners screening accepted, their tasks, edges and screening losses (re-validated
        from disk)."""
        screened = self.rd.phase("screening", self.screening)
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
        learners, tasks, edges, losses = self.accepted_learners()
        empty = [n for t, n in enumerate(self.layout.task_names) if t not in tasks]
        if empty:
            raise WorkflowError(
                f"no accepted upload for tasks {empty}: every task needs at least one learner. "
                f"See {self.rd.path('state', 'screening.json')} for what was rejected or "
                "quarantined and why."
            )
        result, images = train_strategy(
            learners,
            tasks,
            self.layout,
            self.ds,
            self.p,
            strategy,
            self.rd.path("cloud", f"baim-{strategy}"),
            self.seed,
            self.extractor,
            screening_losses=losses,
        )
        for task, by_procedure in images.items():
            for procedure, arr in by_procedure.items():
                save_npy(self.rd.path("images", f"baim-{strategy}", f"{task}_{procedure}.npy"), arr)
        result["learner_edges"] = edges
        return result

    # -- phase 5 ------------------------------------------------------------------------
    def partition(self) -> dict:
        """Cut the BAIM per task and measure, on real test images, that nothing was lost."""
        strategy = source_strategy(self.cfg.strategies)
        baim = load_model(self.rd.path("cloud", f"baim-{strategy}"), "baim")
        assert isinstance(baim, BAIM)
        out: dict[str, Any] = {"source_strategy": strategy, "baim_parameters": baim.num_parameters(), "tasks": {}}
        for t, name in enumerate(self.layout.task_names):
            compact = partition(baim, t)
            folder = save_model(compact, self.rd.path("cloud", "compact", name))
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
        for e in self.transport.edges():
            task = self.layout.task_names[self.layout.edges[e].task]
            manifest, weights = to_parts(load_model(self.rd.path("cloud", "compact", task), "compact"))
            reply = self.transport.request(e, Message("train.deploy", manifest, weights), self.timeout, "deployment")
            if reply.kind != "ack":
                missing.append(_missing(e, reply))
                continue
            done.append(e)
        return {"edges": done, "missing": missing, "bytes": self.ledger.totals_since(mark)}

    def personalization(self) -> dict:
        deployed = self.rd.phase("deployment", self.deployment)["edges"]
        done, missing = {}, []
        for e in deployed:
            reply = self.transport.request(e, Message("train.personalize"), self.timeout, "personalization")
            if reply.kind != "metrics":
                missing.append(_missing(e, reply))
                continue
            done[str(e)] = reply.meta["log"]
        return {"edges": done, "missing": missing}

    # -- evaluation at the edges -----------------------------------------------------------
    def edge_evaluation(self) -> dict:
        mark = len(self.ledger.messages)
        have = {
            "initial": set(self.transport.edges()),
            "deployed": set(self.rd.phase("deployment", self.deployment)["edges"]),
            "personalized": {int(e) for e in self.rd.phase("personalization", self.personalization)["edges"]},
        }
        rows, missing = [], []
        for e in self.transport.edges():
            for which in EDGE_MODELS:
                if e not in have[which]:
                    continue
                meta = {"model": which, "fid_count": self.p.fid_count, "extractor": self.extractor}
                reply = self.transport.request(e, Message("evaluate", meta), self.timeout, "evaluation")
                if reply.kind != "metrics":
                    missing.append(_missing(e, reply) | {"model": which})
                    continue
                for procedure, arr in reply.tensors.items():
                    save_npy(self.rd.path("images", f"edge-{e}", f"{which}_{procedure}.npy"), arr.numpy())
                rows.append(reply.meta)
        for name in self.layout.task_names:  # the real images every FID compared with, and the baseline set
            real, baseline = self.layout.fid_sets(self.ds, name, self.p.fid_count)
            save_npy(self.rd.path("images", "real", f"{name}_baseline.npy"), baseline)
            save_npy(self.rd.path("images", "real", f"{name}.npy"), real)
        return {"edges": rows, "missing": missing, "bytes": self.ledger.totals_since(mark)}

    # -- summary ------------------------------------------------------------------------
    def summary(self) -> dict:
        rd = self.rd
        up = rd.phase("upload", self.upload)
        evaluation = rd.phase("edge_evaluation", self.edge_evaluation)
        deployment = rd.phase("deployment", self.deployment)
        personalization = rd.phase("personalization", self.personalization)
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
            r = rd.phase(f"cloud_{s}", partial(self.cloud, s))
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
        part = rd.phase("partition", self.partition)
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
                "download": deployment["bytes"]["down"],
                "per_phase": {
                    "upload": up["bytes"],
                    "deployment": deployment["bytes"],
                    "evaluation": evaluation["bytes"],
                },
            },
            "screening": rd.phase("screening", self.screening),
            "missing": {
                "upload": up["missing"],
                "deployment": deployment["missing"],
                "personalization": personalization["missing"],
                "evaluation": evaluation["missing"],
            },
        }
        write_json(rd.path("summary.json"), summary)
        from .report import write_report

        write_report(rd.root, summary, self.layout.task_names)
        return summary
