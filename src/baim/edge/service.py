"""An edge node as a message handler: the same object serves both engines.

Message kinds (cloud → edge, and the reply):
- ``query.info`` → ``info``: edge id, task, tier, local sample count.
- ``train.local`` → ``upload``: trains the tier's learner on the local slice (or reuses the
  one already trained: a rerun resumes) and uploads spec + weights + task + sample count +
  local metrics.
- ``train.deploy`` → ``ack``: the compact model of the edge's task (manifest + weights), validated
  and stored.
- ``train.personalize`` → ``metrics``: fine-tunes the deployed model on the local slice.
- ``evaluate`` → ``metrics``: test loss, reconstruction and FID of one of the edge's models
  (``initial``, ``deployed`` or ``personalized``), with the generated images.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..cloud.model import BAIM
from ..cloud.partition import compact_from, load_compact, save_compact
from ..cloud.pipeline import baim_fid
from ..cloud.train import evaluate_baim
from ..data import DataSet
from ..data.layout import Layout
from ..learners import StagedVAE, load_learner
from ..metrics import evaluate_reconstruction
from ..presets import get_preset
from ..transport import Message
from .node import fid_of_model, train_edge
from .personalize import personalize


class EdgeNode:
    def __init__(self, edge: int, layout: Layout, ds: DataSet, folder: str | Path, seed: int = 0):
        self.edge, self.layout, self.ds, self.seed = edge, layout, ds, seed
        self.folder = Path(folder)
        self.slice = layout.edges[edge]
        self.task_name = layout.task_names[self.slice.task]

    def handle(self, msg: Message) -> Message:
        handler = getattr(self, "on_" + msg.kind.replace(".", "_"), None)
        if handler is None:
            return Message("error", {"error": f"edge {self.edge} does not understand {msg.kind!r}"})
        return handler(msg)

    # -- messages -------------------------------------------------------------------------
    def on_query_info(self, msg: Message) -> Message:
        return Message("info", {"edge": self.edge, "task": self.task_name, "tier": self.slice.tier,
                                "samples": len(self.slice.indices)})

    def on_train_local(self, msg: Message) -> Message:
        model_dir = self.folder / "initial"
        if (model_dir / "spec.json").is_file():
            model = load_learner(model_dir)
            metrics = json.loads((model_dir / "metrics.json").read_text())
        else:
            model, metrics = train_edge(self.layout, self.ds, self.edge, model_dir,
                                        epochs=msg.meta.get("epochs"), seed=self.seed)
        # wall-clock figures stay on the edge: they say nothing about the model, and they
        # would make two identical uploads differ in size
        local = {k: v for k, v in metrics.items() if k != "train"}
        local["train_epochs"] = metrics["train"]["epochs"]
        return Message("upload", {"edge": self.edge, "task": self.task_name, "samples": len(self.slice.indices),
                                  "spec": model.spec.to_dict(), "metrics": local},
                       {k: v for k, v in model.state_dict().items()})

    def on_train_deploy(self, msg: Message) -> Message:
        if msg.meta.get("task") != self.task_name:
            return Message("error", {"error": f"edge {self.edge} serves {self.task_name!r}, "
                                              f"not {msg.meta.get('task')!r}"})
        compact = compact_from(msg.meta, msg.tensors)  # validated before anything is stored
        save_compact(compact, self.folder / "deployed")
        return Message("ack", {"edge": self.edge, "parameters": compact.num_parameters()})

    def on_train_personalize(self, msg: Message) -> Message:
        out = self.folder / "personalized"
        if not (out / "manifest.json").is_file():
            compact = load_compact(self.folder / "deployed")
            preset = get_preset(self.layout.preset)
            curve = self.ds.test.load(self.layout.test[self.task_name][: preset.curve_test_per_task or None])
            log = personalize(compact, self.ds.train.load(self.slice.indices), preset, self.seed, curve)
            save_compact(compact, out)
            (out / "log.json").write_text(json.dumps(log, indent=2) + "\n")
        return Message("metrics", {"edge": self.edge, "log": json.loads((out / "log.json").read_text())})

    def on_evaluate(self, msg: Message) -> Message:
        which = msg.meta.get("model", "initial")
        model = self.load_model(which)
        test = self.ds.test.load(self.layout.test[self.task_name])
        n, extractor = msg.meta.get("fid_samples", 500), msg.meta.get("extractor", "domain")
        if isinstance(model, StagedVAE):
            rec = evaluate_reconstruction(model, test)
            f = fid_of_model(model, self.ds, self.layout, self.slice.task, n, extractor, self.seed)
        else:
            rec = evaluate_baim(model, test, 0)
            f = baim_fid(model, self.ds, self.layout, self.slice.task, n, extractor, self.seed, local_task=0)
            f["fid_samples"] = f.pop("fid")
        images = {k: torch.from_numpy(v) for k, v in f.pop("_images").items()}
        return Message("metrics", {"edge": self.edge, "task": self.task_name, "model": which, **rec, **f}, images)

    def load_model(self, which: str) -> StagedVAE | BAIM:
        if which == "initial":
            return load_learner(self.folder / "initial")
        if which in ("deployed", "personalized"):
            return load_compact(self.folder / which)
        raise ValueError(f"edge {self.edge} has no {which!r} model")
