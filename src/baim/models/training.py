"""Training the BAIM on the cloud's common data (phase 4), and evaluating it.

Every epoch mixes all tasks; each sample is routed to its task's squad. The objective is the
learners' (MSE + β·KL, with the KL of the product-of-experts posterior) plus a Switch-style
load-balance loss and a small router z-loss per task, plus TSGate's task-classification loss
(its own parameters only). Connections are pruned every ``prune_interval`` epochs. The
optimiser and learning-rate schedule are the edges' (Adam 0.005, ×0.95 per epoch) for all
three strategies, so their curves compare.
"""

from __future__ import annotations

import math
import time
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Recipe
from ..data import to_float
from ..errors import TrainingDiverged
from ..progress import make_progress
from .baim import BAIM
from .connections import LowRankProjection, Projection
from .evaluation import reconstruction_metrics
from .gates import load_balance_loss, router_z_loss

# Weights of the auxiliary losses: small enough not to fight the reconstruction objective.
BALANCE_WEIGHT, Z_LOSS_WEIGHT, TASK_WEIGHT = 0.01, 0.001, 1.0


def check_epoch(label: str, row: dict, seen: int, skipped: int) -> None:
    """Raise TrainingDiverged if an epoch trained on nothing (every step's loss was NaN or
    infinite, so every step was skipped) or ended with a loss that is not finite. Skipping a
    few bad steps is the numeric guard; a whole epoch of them is divergence, and its numbers
    must not be reported as results."""
    losses = {k: v for k, v in row.items() if k.startswith(("train_", "test_loss"))}
    flat = {
        f"{k} {t}".strip(): float(x)
        for k, v in losses.items()
        for t, x in (v.items() if isinstance(v, dict) else [("", v)])
    }
    bad = sorted(k for k, x in flat.items() if not math.isfinite(x))
    if (seen == 0 and skipped) or bad:
        why = f"{', '.join(bad)} not finite" if bad else f"all {skipped} steps' losses were NaN or infinite"
        raise TrainingDiverged(
            f"{label} diverged in epoch {row.get('epoch')}: {why}. Lower the learning rate or check the "
            "data (and the model it started from); nothing from this training was kept"
        )


def _param_groups(model: BAIM, trainable: set[str] | None, trained: set[int], scale: float) -> list[dict]:
    """Two groups: parameters that start from trained weights or from an exact identity (the
    ``trained`` learners, their latent adapters and, when there are any, the LSGates that choose
    among them) at ``scale`` × the rate, and the new parts (connections, TSGate) at the full rate.
    Measured on a quick run's uploads: adapters at the full rate make a one-learner squad worse
    than its upload after 8 steps (0.0388 vs 0.0359 test loss); at the lower rate it improves
    (0.0351)."""
    slow = tuple(f"learners.{l}." for l in sorted(trained)) + tuple(f"adapters.{l}." for l in sorted(trained))
    slow += ("lsgates.",) if trained else ()
    groups: dict[str, list] = {"trained": [], "new": []}
    for n, p in model.named_parameters():
        if p.requires_grad and (trainable is None or n in trainable):
            groups["trained" if n.startswith(slow) else "new"].append(p)
    return [{"params": ps, "scale": scale if k == "trained" else 1.0, "name": k} for k, ps in groups.items() if ps]


def _optimizer(model: BAIM, lr: float, groups: list[dict], old: torch.optim.Optimizer | None = None):
    opt = torch.optim.Adam([dict(g) for g in groups], lr=lr, foreach=True)  # one fused update, not one per tensor
    if old is not None:  # keep Adam's moments for parameters that survived pruning
        for g in opt.param_groups:
            for p in g["params"]:
                if p in old.state:
                    opt.state[p] = old.state[p]
    return opt


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g["scale"]


def _choose(model: BAIM, ratio: float, retiring: set[str], step: int) -> dict[str, tuple[float, int]]:
    """The next ``floor(ratio × surviving)`` connections to anneal: smallest |α|·‖P‖ first."""
    scored = sorted((_projection(model, n).score(), n) for n in model.connections if n not in retiring)
    return {n: (float(_projection(model, n).alpha), step) for _, n in scored[: math.floor(ratio * len(scored))]}


def _projection(model: BAIM, name: str) -> Projection | LowRankProjection:
    return cast(Projection | LowRankProjection, model.connections[name])


@torch.no_grad()
def _anneal(model: BAIM, retiring: dict[str, tuple[float, int]], step: int, span: int) -> None:
    """α of each retiring connection: linearly from its value when chosen to exactly 0 after ``span`` steps."""
    for name, (alpha0, chosen) in retiring.items():
        left = max(0.0, 1.0 - (step - chosen) / span)
        _projection(model, name).alpha.fill_(alpha0 * left)


def train_baim(
    model: BAIM,
    images: np.ndarray,
    tasks: np.ndarray,
    cfg: Recipe,
    test_sets: dict[int, np.ndarray] | None = None,
    label: str = "cloud",
    trainable: set[str] | None = None,
    prune_interval: int = 0,
    prune_ratio: float = 0.0,
    trained: set[int] | None = None,
    prune_anneal: bool = False,
) -> list[dict]:
    """Train in place; returns one log row per epoch (losses, test loss per task, usage,
    surviving connections, parameter count). Every ``prune_interval`` epochs the fraction
    ``prune_ratio`` of surviving connections is deleted (0 for either: never). ``trained``:
    the learners that start from trained weights, which get ``cfg``'s gentler treatment
    (lower rate, kept normalisation statistics). With ``prune_anneal`` a connection chosen for
    pruning is not cut at once: its α falls linearly to 0 over the next ``prune_interval``
    epochs' steps (the others adapt meanwhile), and it is removed when it is exactly 0, which
    changes nothing; connections chosen too late to reach 0 before the last epoch stay."""
    trained = set(trained or ())
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    data, task_t = to_float(images), torch.from_numpy(np.asarray(tasks, dtype=np.int64))
    groups = _param_groups(model, trainable, trained, cfg.trained_lr_scale)
    opt = _optimizer(model, cfg.lr, groups)
    step = 0
    log = []
    steps = math.ceil(len(data) / cfg.batch_size)
    retiring: dict[str, tuple[float, int]] = {}  # annealed connection -> (its α when chosen, step chosen)
    with make_progress() as progress:
        bar = progress.add_task(label, total=cfg.epochs * steps)
        for epoch in range(cfg.epochs):
            lr = cfg.lr_at(epoch)
            model.train()
            if cfg.keep_norm_stats:  # trained learners keep their BatchNorm statistics (eval mode)
                for l in trained:
                    model.learner(l).eval()
            usage = {t: torch.zeros(len(model.squad(t))) for t in range(len(model.task_names))}
            sums = dict(loss=0.0, mse=0.0, kld=0.0, balance=0.0, task_ce=0.0)
            seen = skipped = 0
            t0 = time.perf_counter()
            perm = torch.randperm(len(data), generator=gen)
            for i in range(0, len(perm), cfg.batch_size):
                b = perm[i : i + cfg.batch_size]
                x, t = data[b], task_t[b]
                _set_lr(opt, cfg.lr_at(epoch, step))
                step += 1
                out = model(x, t)
                mse = F.mse_loss(out.x_hat, x)
                kld = out.kl().mean()
                balance = sum((load_balance_loss(r) for _, r in out.routings.values()), x.new_zeros(()))
                zl = sum((router_z_loss(r) for _, r in out.routings.values()), x.new_zeros(()))
                task_ce = F.cross_entropy(model.tsgate(x), t) if model.tsgate is not None else x.new_zeros(())
                loss = mse + cfg.kld_weight * kld + BALANCE_WEIGHT * balance + Z_LOSS_WEIGHT * zl
                total = loss + TASK_WEIGHT * task_ce
                progress.advance(bar)
                opt.zero_grad(set_to_none=True)
                if not torch.isfinite(total):
                    skipped += 1
                    continue
                total.backward()
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
                opt.step()
                if retiring:
                    _anneal(model, retiring, step, prune_interval * steps)
                for task, (_, r) in out.routings.items():
                    usage[task] += torch.bincount(r.indices.flatten(), minlength=len(usage[task])).float()
                for k, v in (("loss", loss), ("mse", mse), ("kld", kld), ("balance", balance), ("task_ce", task_ce)):
                    sums[k] += float(v.detach()) * len(x)
                seen += len(x)
            pruned = []
            if prune_anneal and prune_ratio > 0 and prune_interval > 0 and (epoch + 1) % prune_interval == 0:
                pruned = [n for n in retiring if float(_projection(model, n).alpha) == 0.0]
                for name in pruned:
                    model.remove_connection(name)
                    del retiring[name]
                if cfg.epochs - epoch - 1 >= prune_interval:  # time left to anneal the next ones to 0
                    retiring |= _choose(model, prune_ratio, set(retiring), step)
                opt = _optimizer(model, lr, _param_groups(model, trainable, trained, cfg.trained_lr_scale), old=opt)
            elif prune_ratio > 0 and prune_interval > 0 and (epoch + 1) % prune_interval == 0:
                pruned = model.prune_connections(prune_ratio)
                opt = _optimizer(model, lr, _param_groups(model, trainable, trained, cfg.trained_lr_scale), old=opt)
            row = {
                "epoch": epoch + 1,
                "lr": lr,
                "seconds": round(time.perf_counter() - t0, 3),
                **{f"train_{k}": v / max(seen, 1) for k, v in sums.items()},
                "skipped_steps": skipped,
                "connections": len(model.connections),
                "pruned": len(pruned),
                **({"annealing": len(retiring)} if prune_anneal else {}),
                "parameters": model.num_parameters(),
                "usage": {model.task_names[t]: (u / u.sum().clamp_min(1)).tolist() for t, u in usage.items()},
            }
            if test_sets:
                ev = {
                    model.task_names[t]: reconstruction_metrics(model, x, t, cfg.kld_weight)["test_loss"]
                    for t, x in test_sets.items()
                }
                row["test_loss"] = ev
                row["test_loss_mean"] = float(np.mean(list(ev.values())))
            check_epoch(label, row, seen, skipped)
            log.append(row)
            progress.update(bar, description=f"{label} loss {row['train_loss']:.4f}")
    model.eval()
    return log
