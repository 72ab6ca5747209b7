"""Phase 6's choice: the model each edge downloads, within that edge's own byte budget.

Why: the lossless compact model of a task carries its whole squad plus feeder learners of
other tasks, so it grows with the federation and can be many times what a small edge
uploaded. Each edge has a budget (by default 1.25× the bytes of its own upload, so two edges
of one task on different tiers can get different models), and is sent the best of these
candidates that fit it, judged on that edge's validation images (never test images):

- ``lossless``: the lossless compact model of its task (:func:`lossless_compact`); with a
  compact latent prior (diagonal + rank 8) if only that makes it fit, which leaves reconstructions
  exactly as they were and changes only how generation samples z;
- ``budgeted``: a cut of it (learners, then connections, chosen by the training objective on
  the task's common images: :func:`partition_within_budget`), with a compact prior, then a
  short gentle fine-tune on the task's common images, since what the kept parts were trained
  to work with is partly gone;
- ``distilled``: the task's BAIM distilled into the edge's own architecture, initialised from
  its upload: trained on the teacher's reconstructions of the task's common images and on the
  teacher's own samples (the prior it fitted), at the gentle rate;
- ``upload``: the edge's own upload, as a one-learner compact model (exactly the learner).

The chosen model is the one with the lowest validation loss among those that fit and are not
worse than the upload on validation; so an edge is never sent a model worse than what it had.
With the preset's ``delivery_choice = "edge"`` the upload is not a candidate to send: the
best of the others goes down, and the edge, after personalising it, keeps whichever of it and
its own upload is better on its validation images; so an edge never *serves* a model worse
than what it had, and the others get the personalisation before they are judged.
When nothing fits, not even the upload, the upload is chosen and the record says so: the
edge loses nothing, and the budget could not be met. ``budget=None`` gives the lossless model
(no choice is made); so does a layout without validation parts where the lossless model fits
(else the upload: neither needs validation to be no worse). The record of each edge names the
candidate, why, and every candidate's bytes and validation loss.

Validation images are the edge's own validation slice. In this simulation the cloud scores
the candidates itself; an edge could score them instead and send back only the losses.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..config import Recipe, parse_download_budget
from ..data import DataSet, to_float
from ..data.layout import Layout
from ..errors import ConfigError
from ..learners import StagedVAE, vae_loss, weights_bytes
from ..models import BAIM, Loss, as_compact, fit, fit_priors, reconstruction_metrics, train_baim
from ..runview import Run
from .budget import compact_bytes, lossless_compact, partition_within_budget, selection_images
from .pipeline import common_data

CANDIDATES = ("lossless", "budgeted", "distilled", "upload")
# A tight budget's prior: diagonal + rank 8, D·9 numbers instead of D². Measured on the quick
# preset (domain FID, 500 fitted-prior samples of the lossless models; tops / footwear /
# trousers & bags), seed 0: full 505 / 939 / 603, diagonal 611 / 1089 / 828, diagonal + rank 8
# 503 / 922 / 596; seed 1: full 491 / 915 / 424, diagonal 582 / 1071 / 648, rank 8 493 / 903 / 413.
COMPACT_PRIOR_RANK = 8
FINETUNE_EPOCHS = 2  # the budgeted cut's short fine-tune on the task's common images
DISTILL_EPOCHS = 6  # distillation into the edge's architecture, from its upload


def budget_bytes(budget: str | None, upload_bytes: int) -> int | None:
    """An edge's byte budget from ``--download-budget`` (a factor of its own upload's bytes,
    megabytes, or ``none``: no limit, ``None``)."""
    parsed = parse_download_budget(budget) if budget is not None else None
    if parsed is None:
        return None
    kind, value = parsed
    return int(value * upload_bytes) if kind == "factor" else int(value)


def with_prior(model: BAIM, rank: int | None) -> BAIM:
    """A copy of ``model`` whose latent priors have the form ``rank`` (None full, 0 diagonal,
    r diagonal + rank r), unfitted; every other weight as it was."""
    if model.config.prior_rank == rank:
        return copy.deepcopy(model)
    out = BAIM(replace(model.config, prior_rank=rank))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("priors.")}
    missing, unexpected = out.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("priors.") for k in missing), (missing, unexpected)
    return out.eval()


@dataclass
class Delivery:
    """What one edge is sent, and why."""

    edge: int
    task: str
    candidate: str
    model: BAIM
    budget_bytes: int | None
    bytes: int
    upload_bytes: int
    val_loss: float | None
    upload_val_loss: float | None
    reason: str
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    sent_bytes: int | None = None  # the deployment message as sent (manifest and weights), once sent

    def record(self) -> dict[str, Any]:
        """JSON-ready: everything but the model."""
        return {
            "edge": self.edge,
            "task": self.task,
            "candidate": self.candidate,
            "reason": self.reason,
            "budget_bytes": self.budget_bytes,
            "bytes": self.bytes,
            "upload_bytes": self.upload_bytes,
            "within_budget": self.budget_bytes is None or self.bytes <= self.budget_bytes,
            "sent_bytes": self.sent_bytes,
            "val_loss": self.val_loss,
            "upload_val_loss": self.upload_val_loss,
            "candidates": self.candidates,
        }


class Deliveries:
    """Chooses every edge's download from one BAIM. Candidates shared between edges (the
    lossless model of a task, a task's cut at one budget) are built once.

    ``common``: task index → the task's common images (training part, uint8); ``recipe``:
    the cloud's (its β, rate and the gentle scale for trained weights). ``common_val``: task
    index → the common data's validation images of the task; when the cloud's recipe converges
    (``patience`` > 0, the study's ``converged`` budget), the cut's fine-tune and the
    distillation converge too, on these (cap: the recipe's epochs), instead of their few fixed
    epochs: the controls that fine-tune an upload on the common data converge, so must these."""

    def __init__(
        self,
        baim: BAIM,
        common: dict[int, np.ndarray],
        recipe: Recipe,
        seed: int = 0,
        common_val: dict[int, np.ndarray] | None = None,
    ):
        self.baim, self.common, self.recipe, self.seed = baim, common, recipe, seed
        self.common_val = common_val or {}
        self._lossless: dict[int, BAIM] = {}
        self._budgeted: dict[tuple[int, int], tuple[BAIM, dict[str, Any]] | str] = {}

    def lossless(self, task: int) -> BAIM:
        if task not in self._lossless:
            self._lossless[task] = lossless_compact(self.baim, task)
        return self._lossless[task]

    def deliver(
        self, edge: int, task: int, upload: StagedVAE, budget: int | None, val: np.ndarray, choice: str = "cloud"
    ) -> Delivery:
        """The model edge ``edge`` (of ``task``, which uploaded ``upload``) is sent within
        ``budget`` bytes (None: the lossless model), chosen on its validation images ``val``;
        ``choice`` ``"edge"``: the best candidate other than the upload, which the edge keeps
        only if, personalised, it beats the upload (:meth:`baim.edge.node.EdgeNode.keep_better`)."""
        name = self.baim.task_names[task]
        up_bytes = len(weights_bytes(upload))
        if budget is None:
            model = self.lossless(task)
            size = compact_bytes(model)
            return Delivery(
                edge, name, "lossless", model, None, size, up_bytes, None, None, "no download budget: lossless"
            )
        blind = len(val) == 0  # a layout without validation parts: nothing to compare on
        upload_loss = None if blind else self.score(upload, val)
        built: dict[str, BAIM] = {}
        notes: dict[str, dict[str, Any]] = {}
        for cand in ("lossless", "upload") if blind else CANDIDATES:
            try:
                model, note = self._candidate(cand, task, upload, budget)
            except ConfigError as exc:  # nothing of this kind fits
                notes[cand] = {"error": str(exc)}
                continue
            size = compact_bytes(model)
            built[cand] = model
            notes[cand] = note | {
                "bytes": size,
                "fits": size <= budget,
                "val_loss": None if blind else self.score(model, val),
            }
        fitting = [c for c in built if notes[c]["fits"]]
        if blind:
            best = "lossless" if "lossless" in fitting else "upload"
            what = "the lossless model fits" if best == "lossless" else "its own upload"
            why = f"no validation images to choose on: {what}"
            size = notes[best]["bytes"]
            return Delivery(edge, name, best, built[best], budget, size, up_bytes, None, None, why, notes)
        assert upload_loss is not None
        if choice == "edge":
            good = [c for c in fitting if c != "upload"]
        else:
            good = [c for c in fitting if notes[c]["val_loss"] <= upload_loss]
        if good and choice == "edge":
            best = min(good, key=lambda c: (notes[c]["val_loss"], CANDIDATES.index(c)))
            reason = (
                f"lowest validation loss ({notes[best]['val_loss']:.5f}, upload's {upload_loss:.5f}) of the "
                f"candidates within {budget:,} bytes other than the upload: the edge personalises it and keeps it "
                "only if it then beats its upload on validation"
            )
        elif good:
            best = min(good, key=lambda c: (notes[c]["val_loss"], CANDIDATES.index(c)))
            others = [f"{c} {notes[c]['val_loss']:.5f}" for c in fitting if c != best]
            reason = (
                f"lowest validation loss ({notes[best]['val_loss']:.5f}, upload's {upload_loss:.5f}) of the "
                f"candidates within {budget:,} bytes" + (f" (others: {', '.join(others)})" if others else "")
            )
            if best == "upload":
                reason = f"every other candidate within {budget:,} bytes is worse on validation: {reason}"
        else:
            best = "upload"
            smallest = min((notes[c]["bytes"] for c in built), default=None)
            reason = (
                f"no candidate fits the budget of {budget:,} bytes (the smallest is {smallest:,} bytes): "
                "the edge keeps its own upload, over budget"
                if not fitting
                else f"no candidate but the upload fits {budget:,} bytes: the edge keeps its own"
                if choice == "edge"
                else f"every candidate within {budget:,} bytes is worse on validation than the upload: it keeps its own"
            )
        return Delivery(
            edge,
            name,
            best,
            built[best],
            budget,
            notes[best]["bytes"],
            up_bytes,
            notes[best]["val_loss"],
            upload_loss,
            reason,
            notes,
        )

    # -- candidates ---------------------------------------------------------------------------
    def _candidate(self, cand: str, task: int, upload: StagedVAE, budget: int) -> tuple[BAIM, dict[str, Any]]:
        if cand == "lossless":
            return self._within(self.lossless(task), task, budget, refit=False)
        if cand == "budgeted":
            return self._cut(task, budget)
        learner = upload if cand == "upload" else self._distilled(task, upload)
        return self._within(as_compact(learner, self.baim.task_names[task]), task, budget, refit=True)

    def _within(self, model: BAIM, task: int, budget: int, refit: bool) -> tuple[BAIM, dict[str, Any]]:
        """``model`` with its full prior if that fits ``budget``, else with a compact one; the
        prior (re)fitted on the task's common images where it changed or ``refit``."""
        form = None
        if compact_bytes(model) > budget:
            model, form = with_prior(model, _rank(model)), _rank(model)
            refit = True
        if refit:
            fit_priors(model, self.common[task], np.zeros(len(self.common[task]), dtype=np.int64), self.seed)
        return model, {"prior": "full" if form is None else _form(form)}

    def _cut(self, task: int, budget: int) -> tuple[BAIM, dict[str, Any]]:
        if compact_bytes(with_prior(self.lossless(task), _rank(self.baim))) <= budget:
            raise ConfigError("the lossless model fits: no cut needed")
        key = (task, budget)
        if key not in self._budgeted:
            self._budgeted[key] = self._make_cut(task, budget)
        made = self._budgeted[key]
        if isinstance(made, str):
            raise ConfigError(made)
        return made

    def _make_cut(self, task: int, budget: int) -> tuple[BAIM, dict[str, Any]] | str:
        # the cut carries the full prior; the compact one that replaces it frees the difference
        full, small = (_prior_bytes(self.baim.latent_dim, r) for r in (None, _rank(self.baim)))
        images = self.common[task]
        try:
            cut, report = partition_within_budget(
                self.baim,
                task,
                budget + full - small,
                images=selection_images(images, self.seed),
                kld_weight=self.recipe.kld_weight,
                seed=self.seed,
            )
        except ConfigError as exc:
            return str(exc)
        cut = with_prior(cut, _rank(cut))
        recipe, val = self._recipe(task, FINETUNE_EPOCHS)
        tasks = np.zeros(len(images), dtype=np.int64)
        log = train_baim(
            cut,
            images,
            tasks,
            recipe,
            label="budgeted",
            pretrained=set(range(len(cut.learners))),
            val=None if val is None else (val, np.zeros(len(val), dtype=np.int64)),
        )
        fit_priors(cut, images, tasks, self.seed)
        keep = ("kept_learners", "dropped_learners", "feeders", "kept_connections", "lossless_bytes")
        return cut, {k: report[k] for k in keep} | {
            "prior": _form(_rank(cut)),
            "finetune_loss": [row["train_loss"] for row in log],
        }

    def _distilled(self, task: int, upload: StagedVAE) -> StagedVAE:
        """The upload trained on the teacher's outputs: its reconstructions (z = μ) of the
        task's common images, and its own samples (fitted prior), as many as there are
        common images."""
        teacher = self.lossless(task)
        images = to_float(self.common[task])
        with torch.no_grad():
            recon = teacher(images, torch.zeros(len(images), dtype=torch.long), sample=False).x_hat
            samples = teacher.generate(0, len(images), torch.Generator().manual_seed(self.seed))
        inputs = torch.cat([images, samples])
        targets = torch.cat([recon, samples])
        student = copy.deepcopy(upload)
        beta = self.recipe.kld_weight

        def objective(model: torch.nn.Module, batch: tuple[torch.Tensor, ...], step: int) -> Loss:
            x, y = batch
            y_hat, mu, logvar = model(x)
            loss, mse, kld = vae_loss(y_hat, y, mu, logvar, beta)
            return Loss(loss, {"loss": loss, "mse": mse, "kld": kld})

        recipe, val = self._recipe(task, DISTILL_EPOCHS)
        recipe = replace(recipe, lr=self.recipe.lr * self.recipe.trained_lr_scale)
        keep = [student] if self.recipe.keep_norm_stats else []
        validate = None if val is None else (lambda m: self.score(m, val))
        fit(
            student,
            (inputs, targets),
            recipe,
            objective,
            keep_eval=keep,
            validate=validate,
            label="distill",
            fixed_cost=True,
        )
        return student

    def _recipe(self, task: int, fixed_epochs: int) -> tuple[Recipe, np.ndarray | None]:
        """A delivery training's recipe and validation images: ``fixed_epochs`` without early
        stopping; or, when the cloud's recipe converges and the task has common validation
        images, early stopping on them with the cloud's patience and cap."""
        val = self.common_val.get(task)
        if self.recipe.patience and val is not None and len(val):
            return replace(self.recipe, seed=self.seed), val
        return replace(self.recipe, epochs=fixed_epochs, patience=0, seed=self.seed), None

    def score(self, model: StagedVAE | BAIM, images: np.ndarray) -> float:
        """``model``'s loss on ``images`` (an edge's validation part) as every choice here scores it."""
        return reconstruction_metrics(model, images, 0, self.recipe.kld_weight, seed=self.seed)["test_loss"]


def _rank(model: BAIM) -> int:
    """The compact prior's rank for ``model``'s latent (below its size)."""
    return min(COMPACT_PRIOR_RANK, model.latent_dim - 1)


def _form(rank: int | None) -> str:
    return "full" if rank is None else "diagonal" if rank == 0 else f"diagonal+rank{rank}"


def _prior_bytes(dim: int, rank: int | None) -> int:
    """The float32 bytes of a prior's mean and scale buffers of the form ``rank``."""
    return 4 * dim * (1 + (dim if rank is None else 1 + rank))


def deliver_all(
    layout: Layout, ds: DataSet, baim: BAIM, uploads: dict[int, StagedVAE], edges: list[int], seed: int = 0
) -> dict[int, Delivery]:
    """Every edge's delivery from ``baim`` under the layout's ``download_budget``: each edge in
    ``edges`` by its accepted upload in ``uploads`` and its validation slice; an edge with no
    accepted upload has nothing to be budgeted by, and gets the lossless model of its task."""
    images, tasks = common_data(layout, ds)
    val, val_tasks = common_data(layout, ds, val=True)
    n = len(layout.tasks)
    deliveries = Deliveries(
        baim,
        {t: images[tasks == t] for t in range(n)},
        layout.settings.cloud,
        seed,
        {t: val[val_tasks == t] for t in range(n)},
    )
    out = {}
    for e in edges:
        task = layout.edges[e].task
        val = ds.train.load(layout.edges[e].val)
        if e not in uploads:
            model = deliveries.lossless(task)
            size = compact_bytes(model)
            why = "no accepted upload to set a budget by: the lossless model"
            loss = deliveries.score(model, val) if len(val) else None  # scored, not chosen
            out[e] = Delivery(e, layout.task_names[task], "lossless", model, None, size, 0, loss, None, why)
            continue
        budget = budget_bytes(layout.settings.download_budget, len(weights_bytes(uploads[e])))
        out[e] = deliveries.deliver(e, task, uploads[e], budget, val, layout.settings.delivery_choice)
    return out


def deliveries_from_run(run_dir: str | Path, budget: str | None = None, seed: int = 0) -> dict[int, Delivery]:
    """:func:`deliver_all` for a finished run, without rerunning it: the BAIM it partitioned,
    every edge's upload as stored (``initial``), the run's budget unless ``budget`` is given."""
    run = Run.open(run_dir)
    layout = run.layout
    if budget is not None:
        layout = replace(layout, preset=layout.preset | {"download_budget": budget})
    edges = [s.edge for s in layout.edges]
    uploads = {e: cast(StagedVAE, run.edge_model(e, "initial")) for e in edges}
    return deliver_all(layout, run.dataset(), run.baim(), uploads, edges, seed)
