"""``baim run``: the workflow end to end into a resumable run directory.

Phases: layout → local training and upload (each edge, over the transport) → screening →
BAIM training with each strategy → partition (of the finetune BAIM) → deployment →
personalisation → evaluation at the edges → summary, figures and report. Each finished phase is
recorded by :class:`baim.rundir.RunDir`; rerunning the same command resumes at the first
unfinished one. The workflow talks to edges only through a :class:`Transport`, so the same
code runs in-process or on another engine.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import json

from .atomic import atomic_write, write_bytes, write_json
from .cloud.fusion import STRATEGIES
from .cloud.io import load_baim
from .cloud.partition import load_compact, manifest_and_weights, save_compact
from .cloud.partition import partition as partition_task
from .cloud.pipeline import common_data, train_strategy
from .cloud.screening import screen_uploads, validate_upload
from .data import DataSet, load_dataset
from .data.layout import Layout, make_layout
from .edge.service import EdgeNode
from .presets import Preset, get_preset
from .rundir import RunDir
from .transport import ByteLedger, InProcessTransport, Message, Transport, encode


ENGINES = ("inprocess", "flower-sim", "flower")  # "flower": a ServerApp on the deployment engine


class WorkflowError(RuntimeError):
    """The workflow cannot go on (e.g. a task has no usable upload); says what to look at."""


def save_npy(path: Path, arr: np.ndarray) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)

    atomic_write(path, _w)


def prepare(out: str | Path, preset: str = "quick", seed: int = 0, data_dir: str | None = None,
            dataset: str = "fashion-mnist", fid_extractor: str = "domain", engine: str = "inprocess",
            strategies: tuple[str, ...] = STRATEGIES) -> tuple[RunDir, Layout, DataSet, Preset]:
    """Open (or resume) a run directory and make its layout (phase 0, on the cloud)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ValueError(f"unknown strategies {unknown}; choose from {STRATEGIES}")
    p = get_preset(preset)
    rd = RunDir(out, {"preset": preset, "seed": seed, "dataset": dataset, "data_dir": data_dir,
                      "fid_extractor": fid_extractor, "engine": engine, "strategies": list(strategies)})
    ds = load_dataset(dataset, data_dir)

    def do_layout() -> dict:
        layout = make_layout(ds, p, seed=seed, data_dir=data_dir)
        layout.save(rd.path("layout.json"))
        return {"edges": len(layout.edges), "cloud": len(layout.cloud)}

    rd.phase("layout", do_layout)
    return rd, Layout.load(rd.path("layout.json")), ds, p


def run(out: str | Path, preset: str = "quick", seed: int = 0, data_dir: str | None = None,
        dataset: str = "fashion-mnist", fid_extractor: str = "domain", engine: str = "inprocess",
        strategies: tuple[str, ...] = STRATEGIES) -> dict:
    """The whole workflow into ``out``; rerun the same call to resume."""
    started = time.perf_counter()
    rd, layout, ds, p = prepare(out, preset, seed, data_dir, dataset, fid_extractor, engine, strategies)
    if engine == "flower":
        raise ValueError("the deployment engine is started with `flwr run` (see README, 'Deployment'); "
                         "baim run takes --engine inprocess or flower-sim")
    if engine == "inprocess":
        ledger = ByteLedger()
        nodes = {e.edge: EdgeNode(e.edge, layout, ds, rd.path("edges", f"edge-{e.edge}"), seed)
                 for e in layout.edges}
        workflow = Workflow(rd, layout, ds, p, InProcessTransport(nodes, ledger), ledger, seed, fid_extractor,
                            engine)
        workflow.run(strategies)
        summary = rd.phase("summary", lambda: workflow.summary(strategies))
    else:
        from .federation.simulation import simulate

        simulate(rd.root, len(layout.edges), data_dir)
        if not rd.done("summary"):
            raise WorkflowError(f"the Flower simulation ended before the workflow finished; see {rd.root}/state")
        summary = json.loads(rd.path("summary.json").read_text())
    summary["wall_seconds_this_invocation"] = round(time.perf_counter() - started, 2)
    return summary


def run_workflow_on(grid, run_dir: str | Path, engine: str = "flower", expected_edges: int | None = None,
                    timeout: float | None = None, strategies: tuple[str, ...] | None = None) -> dict:
    """The workflow from a Flower ServerApp, over the Grid it was given.

    Uses the run directory's configuration when it exists (``baim run --engine flower-sim``
    prepares it); a fresh directory is prepared with the quick preset's defaults.
    """
    from .federation.transport import FlowerTransport

    cfg_path = Path(run_dir) / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {"engine": engine}
    strategies = tuple(cfg.get("strategies", strategies or STRATEGIES))
    rd, layout, ds, p = prepare(run_dir, cfg.get("preset", "quick"), cfg.get("seed", 0), cfg.get("data_dir"),
                                cfg.get("dataset", "fashion-mnist"), cfg.get("fid_extractor", "domain"),
                                cfg.get("engine", engine), strategies)
    if timeout:
        p = p.with_overrides(timeout_s=timeout)
    ledger = ByteLedger()
    transport = FlowerTransport(grid, ledger, expected_edges=expected_edges or len(layout.edges))
    workflow = Workflow(rd, layout, ds, p, transport, ledger, rd.config["seed"], rd.config["fid_extractor"],
                        rd.config["engine"])
    workflow.run(strategies)
    return rd.phase("summary", lambda: workflow.summary(strategies))


def source_strategy(strategies: tuple[str, ...]) -> str:
    """The BAIM that is partitioned and deployed: finetune's (the paper's), if it was trained."""
    return "finetune" if "finetune" in strategies else strategies[0]


class Workflow:
    """The phases, written against a transport."""

    def __init__(self, rd: RunDir, layout: Layout, ds: DataSet, preset: Preset, transport: Transport,
                 ledger: ByteLedger, seed: int, fid_extractor: str, engine: str = "inprocess"):
        self.rd, self.layout, self.ds, self.p = rd, layout, ds, preset
        self.transport, self.ledger, self.seed, self.extractor = transport, ledger, seed, fid_extractor
        self.engine = engine

    def _bytes_since(self, mark: int) -> dict:
        up = sum(m["bytes"] for m in self.ledger.messages[mark:] if m["direction"] == "up")
        down = sum(m["bytes"] for m in self.ledger.messages[mark:] if m["direction"] == "down")
        return {"up": up, "down": down}

    def run(self, strategies: tuple[str, ...]) -> None:
        self.rd.phase("upload", self.upload)
        self.rd.phase("screening", self.screening)
        for s in strategies:
            self.rd.phase(f"cloud_{s}", lambda s=s: self.cloud(s))
        self.rd.phase("partition", lambda: self.partition(source_strategy(strategies)))
        self.rd.phase("deployment", self.deployment)
        self.rd.phase("personalization", self.personalization)
        self.rd.phase("edge_evaluation", self.edge_evaluation)

    # -- phases 1-2: local training on each edge, then one upload each ---------------------
    def upload(self) -> dict:
        mark = len(self.ledger.messages)
        edges, missing = [], []
        for e in self.transport.edges():
            reply = self.transport.request(e, Message("train.local"), self.p.timeout_s, "upload")
            if reply is None or reply.kind != "upload":
                missing.append({"edge": e, "reason": "no answer" if reply is None else reply.meta.get("error")})
                continue
            write_bytes(self.rd.path("cloud", "uploads", f"edge-{e}.msg"), encode(reply))
            edges.append({k: reply.meta[k] for k in ("edge", "task", "samples")} | {"tier": reply.meta["spec"]["tier"],
                                                                                   "metrics": reply.meta["metrics"]})
        return {"edges": edges, "missing": missing, "bytes": self._bytes_since(mark)}

    def _uploads(self) -> dict[int, bytes]:
        return {int(f.stem.split("-")[1]): f.read_bytes()
                for f in sorted(self.rd.path("cloud", "uploads").glob("edge-*.msg"))}

    # -- phase 3 ------------------------------------------------------------------------
    def screening(self) -> dict:
        images, tasks = common_data(self.layout, self.ds)
        common = {t: images[tasks == t] for t in range(len(self.layout.tasks))}
        return screen_uploads(self._uploads(), self.layout.task_names, common,
                              self.ds.image_size, self.ds.channels).report()

    def accepted_learners(self) -> tuple[list, list[int], list[int]]:
        accepted = self.rd.phase("screening", self.screening)["accepted"]
        uploads = self._uploads()
        learners, tasks = [], []
        for e in accepted:
            model, meta = validate_upload(uploads[e], self.layout.task_names, self.ds.image_size, self.ds.channels)
            learners.append(model)
            tasks.append(self.layout.task_names.index(meta["task"]))
        return learners, tasks, accepted

    # -- phase 4 ------------------------------------------------------------------------
    def cloud(self, strategy: str) -> dict:
        learners, tasks, edges = self.accepted_learners()
        empty = [n for t, n in enumerate(self.layout.task_names) if t not in tasks]
        if empty:
            raise WorkflowError(f"no accepted upload for tasks {empty}: every task needs at least one learner. "
                               f"See {self.rd.path('state', 'screening.json')} for what was rejected or "
                               "quarantined and why.")
        _, result = train_strategy(learners, tasks, self.layout, self.ds, self.p, strategy,
                                   self.rd.path("cloud", f"baim-{strategy}"), self.seed, self.extractor)
        for task, images in result.pop("_images").items():
            for kind, arr in images.items():
                name = f"{task}.npy" if kind == "samples" else f"{task}_{kind}.npy"
                save_npy(self.rd.path("images", f"baim-{strategy}", name), arr)
        result["learner_edges"] = edges
        return result

    # -- phase 5 ------------------------------------------------------------------------
    def partition(self, strategy: str) -> dict:
        """Cut the BAIM per task and measure, on real test images, that nothing was lost."""
        import torch

        baim = load_baim(self.rd.path("cloud", f"baim-{strategy}"))
        out = {"source_strategy": strategy, "baim_parameters": baim.num_parameters(), "tasks": {}}
        for t, name in enumerate(self.layout.task_names):
            compact = partition_task(baim, t)
            save_compact(compact, self.rd.path("cloud", "compact", name))
            x = torch.from_numpy(self.ds.test.load(self.layout.test[name][:256])).float() / 255
            gen = torch.Generator().manual_seed(self.seed)
            noise = torch.randn(len(x), baim.latent_dim, generator=gen)
            with torch.no_grad():
                a = baim(x, torch.full((len(x),), t, dtype=torch.long), noise=noise).x_hat
                b = compact(x, torch.zeros(len(x), dtype=torch.long), noise=noise).x_hat
                ga = baim.generate(t, 64, torch.Generator().manual_seed(self.seed))
                gb = compact.generate(0, 64, torch.Generator().manual_seed(self.seed))
            out["tasks"][name] = {"parameters": compact.num_parameters(), "learners": len(compact.learners),
                                  "connections": len(compact.connections),
                                  "max_abs_diff": float(max((a - b).abs().max(), (ga - gb).abs().max()))}
        out["max_abs_diff"] = max(v["max_abs_diff"] for v in out["tasks"].values())
        return out

    # -- phases 6-7 ----------------------------------------------------------------------
    def deployment(self) -> dict:
        mark = len(self.ledger.messages)
        done, missing = [], []
        for e in self.transport.edges():
            task = self.layout.task_names[self.layout.edges[e].task]
            manifest, weights = manifest_and_weights(load_compact(self.rd.path("cloud", "compact", task)))
            reply = self.transport.request(e, Message("train.deploy", manifest, weights), self.p.timeout_s, "deployment")
            if reply is None or reply.kind != "ack":
                missing.append({"edge": e, "reason": "no answer" if reply is None else reply.meta.get("error")})
                continue
            done.append(e)
        return {"edges": done, "missing": missing, "bytes": self._bytes_since(mark)}

    def personalization(self) -> dict:
        deployed = self.rd.phase("deployment", self.deployment)["edges"]
        done, missing = {}, []
        for e in deployed:
            reply = self.transport.request(e, Message("train.personalize"), self.p.timeout_s, "personalization")
            if reply is None or reply.kind != "metrics":
                missing.append(e)
                continue
            done[str(e)] = reply.meta["log"]
        return {"edges": done, "missing": missing}

    # -- evaluation at the edges -----------------------------------------------------------
    def edge_evaluation(self) -> dict:
        mark = len(self.ledger.messages)
        personalized = {int(e) for e in self.rd.phase("personalization", self.personalization)["edges"]}
        deployed = set(self.rd.phase("deployment", self.deployment)["edges"])
        rows, missing = [], []
        for e in self.transport.edges():
            for which in ("initial", "deployed", "personalized"):
                if (which == "deployed" and e not in deployed) or (which == "personalized" and e not in personalized):
                    continue
                meta = {"model": which, "fid_samples": self.p.fid_samples, "extractor": self.extractor}
                reply = self.transport.request(e, Message("evaluate", meta), self.p.timeout_s, "evaluation")
                if reply is None or reply.kind != "metrics":
                    missing.append({"edge": e, "model": which})
                    continue
                for kind, arr in reply.tensors.items():
                    name = f"{which}.npy" if kind == "samples" else f"{which}_{kind}.npy"
                    save_npy(self.rd.path("images", f"edge-{e}", name), arr.numpy())
                rows.append(reply.meta)
        for name in self.layout.task_names:
            path = self.rd.path("images", "real", f"{name}.npy")
            if not path.is_file():  # the real images every FID compared with, and the baseline set
                n = min(self.p.fid_samples, len(self.layout.test[name]) // 2)
                save_npy(path.with_name(f"{name}_baseline.npy"), self.ds.test.load(self.layout.test[name][n:2 * n]))
                save_npy(path, self.ds.test.load(self.layout.test[name][:n]))
        return {"edges": rows, "missing": missing, "bytes": self._bytes_since(mark)}

    # -- summary ------------------------------------------------------------------------
    def summary(self, strategies: tuple[str, ...]) -> dict:
        rd = self.rd
        up = rd.phase("upload", self.upload)
        evaluation = rd.phase("edge_evaluation", self.edge_evaluation)
        ev = {(r["edge"], r["model"]): r for r in evaluation["edges"]}
        deployment = rd.phase("deployment", self.deployment)
        personalization = rd.phase("personalization", self.personalization)
        edges = []
        for u in up["edges"]:
            e = u["edge"]
            row = {"edge": e, "task": u["task"], "tier": u["tier"], "samples": u["samples"]}
            for which, suffix in (("initial", "initial"), ("deployed", "deployed"), ("personalized", "personalized")):
                m = ev.get((e, which), {})
                row[f"fid_{suffix}"] = m.get("fid_samples")
                row[f"fid_standard_prior_{suffix}"] = m.get("fid_standard_prior")
                row[f"fid_reconstructions_{suffix}"] = m.get("fid_reconstructions")
                row[f"test_loss_{suffix}"] = m.get("test_loss")
                row[f"psnr_{suffix}"] = m.get("psnr")
            edges.append(row)
        strat = {}
        for s in strategies:
            r = rd.phase(f"cloud_{s}", lambda s=s: self.cloud(s))
            strat[s] = {k: r[k] for k in ("final_test_loss", "fid", "curve", "per_task", "connections",
                                          "candidates", "parameters", "tsgate_accuracy")}
        part = rd.phase("partition", lambda: self.partition(source_strategy(strategies)))
        seconds = rd.phase_seconds()
        any_eval = next(iter(ev.values()), {})
        rvr = {}
        for r in evaluation["edges"]:
            rvr.setdefault(r["task"], r["fid_real_vs_real"])
        summary = {
            "preset": self.p.name, "engine": self.engine, "dataset": self.ds.name, "seed": self.seed,
            "wall_seconds": round(sum(seconds.values()), 2), "phase_seconds": seconds,
            "edges": edges, "strategies": strat,
            "partition": {"max_abs_diff": part["max_abs_diff"], "source_strategy": part["source_strategy"],
                          "baim_parameters": part["baim_parameters"],
                          "compact_parameters": {k: v["parameters"] for k, v in part["tasks"].items()},
                          "tasks": part["tasks"]},
            "bytes": {"upload": up["bytes"]["up"], "download": deployment["bytes"]["down"],
                      "per_phase": {"upload": up["bytes"], "deployment": deployment["bytes"],
                                    "evaluation": evaluation["bytes"]}},
            "screening": rd.phase("screening", self.screening),
            "missing": {"upload": up["missing"], "deployment": deployment["missing"],
                        "personalization": personalization["missing"], "evaluation": evaluation["missing"]},
            "fid_extractor": self.extractor, "fid_samples": any_eval.get("fid_count"),
            "fid_real_vs_real": rvr,
        }
        write_json(rd.path("summary.json"), summary)
        from .report import write_report
        write_report(rd.root, summary, self.layout.task_names)
        return summary
