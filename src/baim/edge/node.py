"""An edge node as a message handler: the same object serves both engines.

Message kinds (cloud → edge, and the reply):
- ``query.info`` → ``info``: edge id, task, tier, local sample count, and the public half of the
  edge's Ed25519 identity (``identity.pem`` in its folder, created on first use), which the
  cloud pins.
- ``train.local`` → ``upload``: trains the tier's learner on the local slice (or reuses the
  one already trained: a rerun resumes) and uploads spec + weights + task + sample count +
  local metrics, signed with the edge's key over the request's run and nonce and the weights'
  sha256 (:func:`baim.cloud.uploads.authenticate` says what the cloud checks).
- ``train.deploy`` → ``ack``: the compact model of the edge's task (manifest + weights), validated
  and stored.
- ``train.personalize`` → ``metrics``: fine-tunes the deployed model on the local slice and
  puts it in the edge's toolbox (what ``baim serve edge`` serves); under ``delivery_choice =
  "edge"`` it serves its own upload instead when that is better on its validation images
  (``kept`` in the reply says which, and both losses).
- ``evaluate`` → ``metrics``: test loss, reconstruction and FID of one of the edge's models
  (``initial``, ``deployed`` or ``personalized``), with the generated images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import DataSet
from ..data.layout import Layout
from ..errors import BaimError
from ..learners import StagedVAE, weights_digest
from ..models import (
    BAIM,
    as_compact,
    evaluate,
    fit_priors,
    is_saved,
    load_model,
    model_from,
    reconstruction_metrics,
    save_model,
)
from ..signing import load_or_create_key, public_bytes, sign_document
from ..transport import Message
from .local import train_edge
from .personalize import personalize
from .toolbox import ToolboxStore

MODELS = ("initial", "deployed", "personalized")


def _weights_sha(folder: Path) -> str | None:
    """The weights digest a saved model's manifest records (None: nothing saved there)."""
    try:
        return str(json.loads((folder / "manifest.json").read_text())["weights_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


IDENTITY = "identity.pem"


class EdgeNode:
    def __init__(self, edge: int, layout: Layout, ds: DataSet, folder: str | Path, seed: int = 0):
        self.edge, self.layout, self.ds, self.seed = edge, layout, ds, seed
        self.folder = Path(folder)
        self.slice = layout.edges[edge]
        self.task_name = layout.task_names[self.slice.task]
        self.key = load_or_create_key(self.folder / IDENTITY)

    def handle(self, msg: Message) -> Message:
        """Answer one message. A failure the edge can explain becomes an ``error`` reply, which
        the workflow reports as this edge missing (the same as on Flower), and the run goes on."""
        handler = getattr(self, "on_" + msg.kind.replace(".", "_"), None)
        if handler is None:
            return Message("error", {"error": f"edge {self.edge} does not understand {msg.kind!r}"})
        try:
            return handler(msg)
        except BaimError as exc:
            return Message("error", {"error": f"edge {self.edge}: {exc}"})

    # -- messages -------------------------------------------------------------------------
    def on_query_info(self, msg: Message) -> Message:
        return Message(
            "info",
            {
                "edge": self.edge,
                "task": self.task_name,
                "tier": self.slice.tier,
                "samples": len(self.slice.indices),
                "public_key": public_bytes(self.key).hex(),
            },
        )

    def on_train_local(self, msg: Message) -> Message:
        model_dir = self.folder / "initial"
        if is_saved(model_dir):
            model = load_model(model_dir, "learner")
            assert isinstance(model, StagedVAE)
            metrics = json.loads((model_dir / "metrics.json").read_text())
        else:
            model, metrics = train_edge(
                self.layout, self.ds, self.edge, model_dir, epochs=msg.meta.get("epochs"), seed=self.seed
            )
        # wall-clock figures stay on the edge: they say nothing about the model, and they
        # would make two identical uploads differ in size
        local = {k: v for k, v in metrics.items() if k != "train"}
        local["train_epochs"] = metrics["train"]["epochs"]
        header = {
            "edge": self.edge,
            "task": self.task_name,
            "samples": len(self.slice.indices),
            "spec": model.spec.to_dict(),
            "metrics": local,
            "auth": {
                "run": msg.meta.get("run"),
                "nonce": msg.meta.get("nonce"),
                "weights_sha256": weights_digest(model),
            },
        }
        return Message("upload", sign_document(self.key, header), {k: v for k, v in model.state_dict().items()})

    def on_train_deploy(self, msg: Message) -> Message:
        if msg.meta.get("task") != self.task_name:
            return Message(
                "error", {"error": f"edge {self.edge} serves {self.task_name!r}, not {msg.meta.get('task')!r}"}
            )
        compact = model_from(msg.meta, msg.tensors, f"deployment to edge {self.edge}", "compact")
        before = _weights_sha(self.folder / "deployed")
        save_model(compact, self.folder / "deployed")  # validated before anything is stored
        if before is not None and before != _weights_sha(self.folder / "deployed"):
            # a new version (the lifecycle's redeployment): its personalisation is still to do
            (self.folder / "personalized" / "manifest.json").unlink(missing_ok=True)
        return Message("ack", {"edge": self.edge, "parameters": sum(p.numel() for p in compact.parameters())})

    def on_train_personalize(self, msg: Message) -> Message:
        out = self.folder / "personalized"
        if not is_saved(out):
            compact = self.load_model("deployed")
            assert isinstance(compact, BAIM)
            preset = self.layout.settings
            ids = preset.curve_ids(self.layout.test[self.task_name])
            curve = None if ids is None else self.ds.test.load(ids)
            log = personalize(compact, self.local_images(), preset.personalize.with_seed(self.seed), curve)
            served, kept = self.keep_better(compact)
            files = {"log.json": json.dumps(log, indent=2) + "\n"}
            if kept is not None:
                files["kept.json"] = json.dumps(kept, indent=2) + "\n"
            save_model(served, out, files)  # log (and the choice) before the manifest
        ToolboxStore(self.folder / "toolbox").add_own(out, self.task_name)  # what `baim serve edge` serves
        meta: dict[str, Any] = {"edge": self.edge, "log": json.loads((out / "log.json").read_text())}
        if (out / "kept.json").is_file():
            meta["kept"] = json.loads((out / "kept.json").read_text())
        return Message("metrics", meta)

    def keep_better(self, personalised: BAIM) -> tuple[BAIM, dict[str, Any] | None]:
        """Under the preset's ``delivery_choice = "edge"``: the personalised model, or the edge's
        own upload (as a one-learner compact model, its prior fitted on local images) if that is
        better on the edge's validation images; with the record of the choice. Otherwise (or
        with no validation images or no upload to compare with) the personalised model as is."""
        preset = self.layout.settings
        if preset.delivery_choice != "edge" or not self.slice.val or not is_saved(self.folder / "initial"):
            return personalised, None
        val = self.ds.train.load(self.slice.val)
        upload = self.load_model("initial")
        beta = preset.personalize.kld_weight
        loss = {
            name: reconstruction_metrics(m, val, 0, beta, seed=self.seed)["test_loss"]
            for name, m in (("personalised", personalised), ("upload", upload))
        }
        kept = "upload" if loss["upload"] < loss["personalised"] else "personalised"
        record = {"kept": kept, "val_loss": loss}
        if kept == "personalised":
            return personalised, record
        assert isinstance(upload, StagedVAE)
        own = as_compact(upload, self.task_name)
        local = self.local_images()
        fit_priors(own, local, np.zeros(len(local), dtype=np.int64), seed=self.seed)
        return own, record

    def on_evaluate(self, msg: Message) -> Message:
        """Score one of this edge's models with every procedure of :func:`baim.models.evaluate`.
        A learner's fitted prior is fitted here, on local data: it never leaves the edge."""
        which = msg.meta.get("model", "initial")
        model = self.load_model(which)
        real, baseline = self.layout.fid_sets(self.ds, self.task_name, int(msg.meta.get("fid_count", 500)))
        ev = evaluate(
            model,
            self.ds.test.load(self.layout.test[self.task_name]),
            real,
            baseline,
            str(msg.meta.get("extractor", "domain")),
            kld_weight=self.layout.settings.edge.kld_weight,
            seed=self.seed,
            prior_images=self.local_images() if isinstance(model, StagedVAE) else None,
            own_test=self.ds.test.load(self.slice.test) if self.slice.test else None,
        )
        images = {k: torch.from_numpy(v) for k, v in ev.images.items()}
        return Message("metrics", {"edge": self.edge, "task": self.task_name, "model": which, **ev.metrics}, images)

    def local_images(self):
        return self.ds.train.load(self.slice.indices)

    def load_model(self, which: str) -> StagedVAE | BAIM:
        if which not in MODELS:
            raise BaimError(f"edge {self.edge} has no {which!r} model; it has {', '.join(MODELS)}")
        return load_model(self.folder / which, "learner" if which == "initial" else "compact")
