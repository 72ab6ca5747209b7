"""``fedavg`` and ``fd``: round-based federated training, quality recorded after every round.

- ``fedavg``: per task, one shared architecture (the smallest tier among the task's edges:
  FedAvg averages weights, so every participant must hold the same one). Each round the cloud
  sends the task's global model to each of its edges; each trains ``local_epochs`` epochs on
  its slice with the edges' recipe (the learning rate decayed by the epoch count so far) and
  sends its weights back; the cloud averages them weighted by sample count (BatchNorm
  statistics included). Each edge keeps its own Adam state from round to round: a fresh Adam
  takes its first steps at about the full rate on every weight whatever the gradient's scale,
  which undoes part of what the average holds every round; keeping the moments removes that at
  no cost in bytes and with no new setting to tune (a server optimiser such as FedAdam adds a
  server rate and moments to choose and leaves the clients' restart in place). A task with one
  edge has nothing to average: that edge trains locally for the same epochs, and no round
  sends anything.
- ``fd`` (federated distillation): edges keep their own tier's architecture and never send
  weights. The cloud sends each edge its task's public images (the cloud's common images of the
  task) once. Each round an edge trains ``local_epochs`` epochs on its slice, plus (from round
  two) ``distill_weight`` × MSE between its reconstruction of a public batch and the consensus;
  then it uploads its reconstructions (z = μ, as uint8 images) of every public image; the cloud
  averages them per task into the consensus and sends that down.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...data import to_float, to_uint8
from ...learners import StagedVAE, plain_state
from ...models import generate
from ...models.evaluation import learner_prior
from ...models.fit import EarlyStopping
from ...transport import Message
from ..common import Context, build, largest_tier, smallest_tier, train_vae
from ..measure import Meter, latency_ms, ledger_totals, model_bytes
from ..row import MethodRow, method_row


def _average(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    total = float(sum(weights))
    out: dict[str, torch.Tensor] = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            out[k] = torch.stack([s[k] * (w / total) for s, w in zip(states, weights)]).sum(0)
        else:  # BatchNorm's step counter
            out[k] = torch.stack([s[k] for s in states]).max()
    return out


class _Curve:
    """The per-round curve of a round-based method: after every round the bytes so far; every
    ``every`` rounds (and after the first and the last) the cheap numbers too: test loss,
    likelihood bound and validation loss, means over edges (FID is taken once, on the final
    models).

    What a round's point describes is the model each edge would keep if the method ended
    there: its current model without early stopping; with it, the best round so far on
    validation (what :class:`EarlyStopping` restores at the end). So the curve's last point is
    the final models' score, and the bytes to match baim count only a model validation would
    have chosen.

    Why not every round: a converging FedAvg or FD runs 50-90 rounds, and scoring the kept
    models (1,000 test images and a 64 × 64 importance-sampled bound per model) cost about as
    much as the rounds' training (a FedAvg cell 699 s, its training 354 s; quick seed 0,
    2026-12-06). Every fifth round at ``converged`` keeps the curve's shape and resolves "the
    bytes to match baim" to between two scored rounds (the study reports both ends). An edge
    whose kept model did not change since its last scoring keeps its numbers (the same
    numbers: the scoring is seeded); a model several edges hold (FedAvg's global model of a
    task) is scored on the task's test set once."""

    def __init__(self, ctx: Context, wire: Any, every: int):
        self.ctx, self.wire, self.every = ctx, wire, max(1, every)
        self.rows: list[dict] = []
        self.scores: dict[int, dict] = {}
        self.dirty: set[int] = set(ctx.edges)  # edges whose kept model changed since scored
        self.kept_val: dict[int, float] = {}  # the validation loss of each edge's kept model

    def kept_changed(self, edges: set[int], vals: dict[int, float]) -> None:
        """``edges``' kept models changed this round; ``vals`` the validation losses already
        taken of them (reused, not computed again)."""
        self.dirty |= edges
        self.kept_val |= {e: v for e, v in vals.items() if e in edges}
        for e in edges - set(vals):
            self.kept_val.pop(e, None)

    def after_round(self, r: int, kept: Callable[[], dict[int, StagedVAE]]) -> None:
        """Round ``r``'s point; ``kept()`` gives each edge's kept model, asked for only when
        the round is scored."""
        b = ledger_totals(self.wire.ledger.messages)
        self.rows.append({"round": r, "bytes_cum": b["up"] + b["down"]})
        if r == 1 or r % self.every == 0:
            self._score(kept() if self.dirty else {})  # nothing changed: last numbers carried

    def finish(self, final: dict[int, StagedVAE]) -> None:
        """Score the last round's point (the final, restored models) if it was not."""
        if self.rows and self.rows[-1].get("scored") is not True:
            self._score(final)

    def _score(self, models: dict[int, StagedVAE]) -> None:
        shared: dict = {}
        for e in self.ctx.edges:
            if e in self.dirty or e not in self.scores:
                self.scores[e] = self.ctx.cheap_quality(e, models[e], shared, val_loss=self.kept_val.get(e))
        self.dirty.clear()
        per = [self.scores[e] for e in self.ctx.edges]
        self.rows[-1] |= {k: float(np.mean([p[k] for p in per])) for k in per[0]}
        self.rows[-1]["scored"] = True


def _kept(model: StagedVAE, stopper: EarlyStopping | None, r: int) -> StagedVAE:
    """What early stopping would keep of ``model`` after round ``r``: the model itself if this
    round is its best (or nothing is tracked), else a copy holding the best round's weights."""
    if stopper is None or stopper.best_state is None or stopper.best_epoch == r:
        return model
    kept = copy.deepcopy(model)
    kept.load_state_dict(stopper.best_state)
    return kept.eval()


def _task_val(ctx: Context, t: int, models: dict[int, StagedVAE]) -> tuple[float, dict[int, float]]:
    """Sample-weighted validation loss of a task's models on its edges' validation parts (each
    edge scores its own part and reports one number; left out of the bytes), and each edge's
    own number (for the round's row)."""
    per = {e: ctx.val_loss(e, models[e]) for e in ctx.edges_of(t) if ctx.layout.edges[e].val}
    if not per:
        return float("nan"), per
    return float(np.average(list(per.values()), weights=[len(ctx.layout.edges[e].val) for e in per])), per


def _kept_changed(stopper: EarlyStopping, r: int) -> bool:
    """Whether round ``r``'s model is now what early stopping keeps (a new best, or no best yet:
    then restoring leaves the current model)."""
    return stopper.best_state is None or stopper.best_epoch == r


def _latency(ctx: Context, models: dict[int, StagedVAE]) -> float:
    lat = []
    for e, m in models.items():
        prior = learner_prior(m, ctx.local_images(e), ctx.seed)
        lat.append(latency_ms(partial(generate, m, 16, ctx.seed, prior=prior)))
    return round(float(np.mean(lat)), 3)


def _fedavg_round(
    ctx: Context,
    wire: Any,
    meter: Meter,
    t: int,
    r: int,
    global_model: StagedVAE,
    local: dict[int, StagedVAE],
    opts: dict[int, torch.optim.Optimizer],
) -> None:
    """Round ``r`` of task ``t``: the global model down to each edge, local epochs there (each
    edge's Adam continuing), the weights up, their sample-weighted average into ``global_model``."""
    E = ctx.settings.local_epochs
    states, weights = [], []
    for e in ctx.edges_of(t):
        with meter.cloud("rounds"):
            msg = Message("fedavg.model", {"round": r, "task": t}, plain_state(global_model))
        got = wire.down(e, msg, "rounds")
        with meter.edge("rounds"):
            local[e].load_state_dict(got.tensors)  # in place: the edge's optimiser still holds its weights
            x = ctx.local_images(e)
            recipe = ctx.recipe(1000 * e + r, local[e].spec.tier)
            opts[e] = train_vae(local[e], x, recipe, E, first_epoch=r * E, opt=opts.get(e))
            up = Message("fedavg.update", {"round": r, "samples": len(x)}, plain_state(local[e]))
        got = wire.up(e, up, "rounds")
        with meter.cloud("rounds"):
            states.append(got.tensors)
            weights.append(int(got.meta["samples"]))
    with meter.cloud("rounds"):
        global_model.load_state_dict(_average(states, weights))
        global_model.eval()


@dataclass
class _FedAvgRounds:
    """What FedAvg's rounds leave: each task's global model (a lone edge's own model) at its
    best round, the curve, the messages and the work they took. ``fedavg_ft`` starts from a
    copy of ``fedavg``'s (the same rounds, run once per comparison context)."""

    tiers: dict[int, str]
    global_models: dict[int, StagedVAE]
    held: dict[int, StagedVAE]  # what each edge serves: its task's global model, or its own
    rounds: list[dict]
    best_round: dict[int, int]
    wire: Any
    meter: Meter
    train_wall: float


def _fedavg_rounds(ctx: Context, capacity: str) -> _FedAvgRounds:
    wire, meter = ctx.wire(), Meter()
    R, E, P = ctx.settings.rounds, ctx.settings.local_epochs, ctx.settings.patience
    pick = smallest_tier if capacity == "smallest" else largest_tier
    tasks = sorted({ctx.task_of(e) for e in ctx.edges})
    tiers = {t: pick([ctx.tier_of(e) for e in ctx.edges_of(t)]) for t in tasks}
    # only a task with several edges has a global model; a lone edge trains its own, locally
    global_models = {t: build(tiers[t], ctx.ds, ctx.seed + 700 + t) for t in tasks if len(ctx.edges_of(t)) > 1}
    local = {e: build(tiers[ctx.task_of(e)], ctx.ds, ctx.seed + 1000 * e) for e in ctx.edges}
    opts: dict[int, torch.optim.Optimizer] = {}
    held = {e: global_models.get(ctx.task_of(e), local[e]) for e in ctx.edges}  # what each edge serves
    stoppers = {t: EarlyStopping(P) for t in tasks} if P else {}
    active = set(tasks)
    curve = _Curve(ctx, wire, ctx.settings.curve_every)

    def kept(r: int) -> dict[int, StagedVAE]:
        by_task = {t: _kept(held[ctx.edges_of(t)[0]], stoppers.get(t), r) for t in tasks}
        return {e: by_task[ctx.task_of(e)] for e in ctx.edges}

    train_wall = 0.0
    with meter.counting():
        for r in range(R):
            if not active:
                break
            t0 = time.perf_counter()
            changed = set() if P else {e for t in active for e in ctx.edges_of(t)}
            vals: dict[int, float] = {}
            for t in sorted(active):
                if t in global_models:
                    _fedavg_round(ctx, wire, meter, t, r, global_models[t], local, opts)
                else:
                    (e,) = ctx.edges_of(t)
                    with meter.edge("rounds"):
                        opts[e] = train_vae(
                            local[e],
                            ctx.local_images(e),
                            ctx.recipe(1000 * e + r, local[e].spec.tier),
                            E,
                            first_epoch=r * E,
                            opt=opts.get(e),
                        )
                if P:
                    task_model = held[ctx.edges_of(t)[0]]
                    score, per_edge = _task_val(ctx, t, held)
                    vals |= per_edge
                    if stoppers[t].update(task_model, r + 1, score):
                        active.discard(t)
                    if _kept_changed(stoppers[t], r + 1):
                        changed |= set(ctx.edges_of(t))
            train_wall += time.perf_counter() - t0
            with meter.paused():  # measurement, not the method's work
                curve.kept_changed(changed, vals)
                curve.after_round(r + 1, partial(kept, r + 1))
        for t in tasks:  # the best round's weights (the edges keep what they were sent then)
            if P:
                stoppers[t].restore(held[ctx.edges_of(t)[0]])
        with meter.paused():
            curve.finish(held)
    best = {t: s.best_epoch for t, s in stoppers.items()}
    return _FedAvgRounds(tiers, global_models, held, curve.rows, best, wire, meter, train_wall)


def run_fedavg(ctx: Context, capacity: str = "smallest", finetune: bool = False) -> MethodRow:
    """FedAvg per task at the task's ``smallest`` (``fedavg``) or ``largest`` tier
    (``fedavg_large``: capacity nearer what baim deploys); with ``finetune`` the cloud then
    fine-tunes each task's global model on its common data and sends it down once more
    (``fedavg_ft``). With ``ctx.settings.patience`` the rounds are a cap: a task stops once its
    edges' validation loss has not improved for that many rounds, and keeps its best round.

    The rounds run once per context and capacity: ``fedavg_ft`` after ``fedavg`` starts from a
    copy of what its rounds left (the same models, curve, messages and work: the rounds are
    seeded, so running them again would repeat them exactly) and adds only its fine-tune."""
    R, E, P = ctx.settings.rounds, ctx.settings.local_epochs, ctx.settings.patience
    done = ctx.cache.setdefault("fedavg_rounds", {})
    if capacity not in done:
        done[capacity] = _fedavg_rounds(ctx, capacity)
    run = copy.deepcopy(done[capacity]) if finetune else done[capacity]
    wire, meter, held, global_models = run.wire, run.meter, run.held, run.global_models
    train_wall = run.train_wall
    if finetune:
        t0 = time.perf_counter()
        with meter.counting():
            _finetune_globals(ctx, wire, meter, global_models)
        train_wall += time.perf_counter() - t0
    rounds = run.rounds
    final = held
    name = "fedavg" + ("_large" if capacity == "largest" else "") + ("_ft" if finetune else "")
    ctx.cache.setdefault("wires", {})[name] = wire  # each variant's own messages
    return method_row(
        name,
        f"per task, FedAvg over the task's edges with one shared architecture (the task's {capacity} tier), "
        f"{'up to ' if P else ''}{R} rounds × {E} local epochs, weighted by sample count"
        + (
            "; then the cloud fine-tunes each global model on the task's common data and sends it down"
            if finetune
            else ""
        ),
        {
            "rounds": R,
            "local_epochs": E,
            "patience": P,
            "rounds_run": len(rounds),
            "curve_every": ctx.settings.curve_every,
            "best_round": {ctx.layout.task_names[t]: b for t, b in run.best_round.items()},
            "tiers": {ctx.layout.task_names[t]: v for t, v in run.tiers.items()},
        },
        messages=wire.ledger.messages,
        raw_data_bytes=wire.raw_data_bytes,
        compute=meter,
        storage=(
            sum(model_bytes(m) for m in final.values()),
            sum(model_bytes(m) for m in global_models.values()),
        ),
        latency_ms=_latency(ctx, final),
        round_trips=0,
        wall_s=train_wall,
        per_edge=[ctx.evaluate_edge(e, final[e]) for e in ctx.edges],
        rounds=rounds,
    )


def _finetune_globals(ctx: Context, wire: Any, meter: Meter, global_models: dict[int, StagedVAE]) -> None:
    """Each task's global model fine-tuned in the cloud on the task's common images (early
    stopping on the common validation part when converging), then sent to the task's edges."""
    common, tasks = ctx.common()
    val, val_tasks = ctx.common_val()
    epochs = ctx.preset.personalize.epochs if not ctx.settings.patience else ctx.settings.central_epochs
    for t, model in global_models.items():
        with meter.cloud("finetune"):
            recipe = ctx.converging(ctx.recipe(900 + t, model.spec.tier), epochs)
            train_vae(
                model, common[tasks == t], recipe, recipe.epochs, val=val[val_tasks == t] if recipe.patience else None
            )
            msg = Message("fedavg.model", {"task": t, "finetuned": True}, plain_state(model))
        for e in ctx.edges_of(t):
            wire.down(e, msg, "finetune")


def run_fd(ctx: Context) -> MethodRow:
    wire, meter = ctx.wire(), Meter()
    R, E, lam = ctx.settings.rounds, ctx.settings.local_epochs, ctx.settings.distill_weight
    common, common_tasks = ctx.common()
    models = {e: build(ctx.tier_of(e), ctx.ds, ctx.seed + 1000 * e) for e in ctx.edges}
    opts: dict[int, Any] = {}
    public: dict[int, np.ndarray] = {}
    consensus: dict[int, torch.Tensor | None] = {e: None for e in ctx.edges}
    cloud_consensus: dict[int, torch.Tensor] = {}
    P = ctx.settings.patience
    stoppers = {e: EarlyStopping(P) for e in ctx.edges} if P else {}
    active = set(ctx.edges)
    curve = _Curve(ctx, wire, ctx.settings.curve_every)

    def kept(r: int) -> dict[int, StagedVAE]:
        return {e: _kept(models[e], stoppers.get(e), r) for e in ctx.edges}

    train_wall = 0.0
    t0 = time.perf_counter()
    with meter.counting():
        for e in ctx.edges:  # the task's public images, once
            t = ctx.task_of(e)
            got = wire.down(
                e, Message("fd.public", {"task": t}, {"images": torch.from_numpy(common[common_tasks == t])}), "setup"
            )
            public[e] = got.tensors["images"].numpy()
        train_wall += time.perf_counter() - t0
        for r in range(R):
            if not active:
                break
            t0 = time.perf_counter()
            changed = set() if P else set(active)
            vals: dict[int, float] = {}
            outputs: dict[int, dict[int, torch.Tensor]] = {}
            for e in sorted(active):
                with meter.edge("rounds"):
                    pub = to_float(public[e])
                    gen = torch.Generator().manual_seed(ctx.seed + 1000 * e + r)
                    target = consensus[e]
                    bs = ctx.preset.edge.batch_size

                    def extra(
                        model: StagedVAE,
                        x: torch.Tensor,
                        pub: Any = pub,
                        target: Any = target,
                        gen: Any = gen,
                        bs: int = bs,
                    ) -> torch.Tensor:
                        if target is None:
                            return torch.zeros(())
                        idx = torch.randint(len(pub), (min(bs, len(pub)),), generator=gen)
                        return lam * F.mse_loss(model.decode(model.encode(pub[idx])[0]), target[idx])

                    opts[e] = train_vae(
                        models[e],
                        ctx.local_images(e),
                        ctx.recipe(1000 * e, models[e].spec.tier),
                        E,
                        first_epoch=r * E,
                        extra=extra,
                        opt=opts.get(e),
                    )
                    with torch.no_grad():
                        out = to_uint8(models[e].decode(models[e].encode(pub)[0]))
                got = wire.up(
                    e, Message("fd.outputs", {"round": r}, {"reconstructions": torch.from_numpy(out)}), "rounds"
                )
                outputs.setdefault(ctx.task_of(e), {})[e] = got.tensors["reconstructions"]
            for t, by_edge in outputs.items():
                with meter.cloud("rounds"):
                    mean = torch.stack([v.float() for v in by_edge.values()]).mean(0)
                    cons = mean.round().clamp(0, 255).to(torch.uint8)
                    cloud_consensus[t] = cons
                for e in by_edge:
                    got = wire.down(e, Message("fd.consensus", {"round": r}, {"consensus": cons}), "rounds")
                    consensus[e] = got.tensors["consensus"].float() / 255
            for e in sorted(active) if P else ():  # an edge that stopped improving stops taking part
                vals[e] = ctx.val_loss(e, models[e])
                if stoppers[e].update(models[e], r + 1, vals[e]):
                    active.discard(e)
                if _kept_changed(stoppers[e], r + 1):
                    changed.add(e)
            train_wall += time.perf_counter() - t0
            with meter.paused():  # measurement, not the method's work
                curve.kept_changed(changed, vals)
                curve.after_round(r + 1, partial(kept, r + 1))
        for e in stoppers:
            stoppers[e].restore(models[e])
        with meter.paused():
            curve.finish(models)
    rounds = curve.rows
    ctx.cache.setdefault("wires", {})["fd"] = wire
    return method_row(
        "fd",
        "federated distillation: edges keep their own tiers and exchange reconstructions of "
        f"the cloud's public images (uint8), never weights; {'up to ' if P else ''}{R} rounds × {E} local epochs",
        {
            "rounds": R,
            "local_epochs": E,
            "patience": P,
            "rounds_run": len(rounds),
            "curve_every": ctx.settings.curve_every,
            "distill_weight": lam,
            "outputs": "uint8 reconstructions (z = mu)",
        },
        messages=wire.ledger.messages,
        raw_data_bytes=wire.raw_data_bytes,
        compute=meter,
        storage=(
            sum(model_bytes(m) for m in models.values()) + sum(p.nbytes for p in public.values()),
            sum(int(c.numel()) for c in cloud_consensus.values()),
        ),
        latency_ms=_latency(ctx, models),
        round_trips=0,
        wall_s=train_wall,
        per_edge=[ctx.evaluate_edge(e, models[e]) for e in ctx.edges],
        rounds=rounds,
    )
