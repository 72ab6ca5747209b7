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
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data import to_float
from ..progress import make_progress
from .gates import load_balance_loss, router_z_loss
from .model import BAIM
from .pruning import prune_connections


@dataclass
class CloudConfig:
    epochs: int
    batch_size: int = 64
    lr: float = 0.005
    lr_decay: float = 0.95
    kld_weight: float = 0.00025
    balance_weight: float = 0.01
    z_loss_weight: float = 0.001
    task_weight: float = 1.0
    prune_interval: int = 10
    prune_ratio: float = 0.1
    grad_clip: float = 10.0
    seed: int = 0


def _optimizer(model: BAIM, lr: float, trainable: set[str] | None, old: torch.optim.Optimizer | None = None):
    params = [p for n, p in model.named_parameters()
              if p.requires_grad and (trainable is None or n in trainable)]
    opt = torch.optim.Adam(params, lr=lr)
    if old is not None:  # keep Adam's moments for parameters that survived pruning
        for p in params:
            if p in old.state:
                opt.state[p] = old.state[p]
    return opt


def train_baim(model: BAIM, images: np.ndarray, tasks: np.ndarray, cfg: CloudConfig,
               test_sets: dict[int, np.ndarray] | None = None, label: str = "cloud",
               trainable: set[str] | None = None) -> list[dict]:
    """Train in place; returns one log row per epoch (losses, test loss per task, usage,
    surviving connections, parameter count)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    data, task_t = to_float(images), torch.from_numpy(np.asarray(tasks, dtype=np.int64))
    opt = _optimizer(model, cfg.lr, trainable)
    log = []
    steps = math.ceil(len(data) / cfg.batch_size)
    with make_progress() as progress:
        bar = progress.add_task(label, total=cfg.epochs * steps)
        for epoch in range(cfg.epochs):
            lr = cfg.lr * cfg.lr_decay ** epoch
            for g in opt.param_groups:
                g["lr"] = lr
            model.train()
            usage = {t: torch.zeros(len(model.squad(t))) for t in range(len(model.task_names))}
            sums = dict(loss=0.0, mse=0.0, kld=0.0, balance=0.0, task_ce=0.0)
            seen = skipped = 0
            t0 = time.perf_counter()
            perm = torch.randperm(len(data), generator=gen)
            for i in range(0, len(perm), cfg.batch_size):
                b = perm[i:i + cfg.batch_size]
                x, t = data[b], task_t[b]
                out = model(x, t)
                mse = F.mse_loss(out.x_hat, x)
                kld = out.kl().mean()
                balance = sum(load_balance_loss(r) for _, r in out.routings.values())
                zl = sum(router_z_loss(r) for _, r in out.routings.values())
                task_ce = F.cross_entropy(model.tsgate(x), t) if model.tsgate is not None else x.new_zeros(())
                loss = mse + cfg.kld_weight * kld + cfg.balance_weight * balance + cfg.z_loss_weight * zl
                total = loss + cfg.task_weight * task_ce
                progress.advance(bar)
                opt.zero_grad(set_to_none=True)
                if not torch.isfinite(total):
                    skipped += 1
                    continue
                total.backward()
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
                opt.step()
                for task, (_, r) in out.routings.items():
                    usage[task] += torch.bincount(r.indices.flatten(), minlength=len(usage[task])).float()
                for k, v in (("loss", loss), ("mse", mse), ("kld", kld), ("balance", balance), ("task_ce", task_ce)):
                    sums[k] += float(v.detach()) * len(x)
                seen += len(x)
            pruned = []
            if cfg.prune_ratio > 0 and cfg.prune_interval > 0 and (epoch + 1) % cfg.prune_interval == 0:
                pruned = prune_connections(model, cfg.prune_ratio)
                opt = _optimizer(model, lr, trainable, old=opt)
            row = {"epoch": epoch + 1, "lr": lr, "seconds": round(time.perf_counter() - t0, 3),
                   **{f"train_{k}": v / max(seen, 1) for k, v in sums.items()},
                   "skipped_steps": skipped, "connections": len(model.connections),
                   "pruned": len(pruned), "parameters": model.num_parameters(),
                   "usage": {model.task_names[t]: (u / u.sum().clamp_min(1)).tolist() for t, u in usage.items()}}
            if test_sets:
                ev = {model.task_names[t]: evaluate_baim(model, x, t, cfg.kld_weight)["test_loss"]
                      for t, x in test_sets.items()}
                row["test_loss"] = ev
                row["test_loss_mean"] = float(np.mean(list(ev.values())))
            log.append(row)
            progress.update(bar, description=f"{label} loss {row['train_loss']:.4f}")
    model.eval()
    return log


@torch.no_grad()
def evaluate_baim(model: BAIM, images: np.ndarray, task: int, kld_weight: float = 0.00025,
                  batch_size: int = 500, seed: int = 0) -> dict[str, float]:
    """Test loss (objective, seeded posterior noise) and MSE/PSNR from z = μ, for one task."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    loss_sum = mse_sum = psnr_sum = 0.0
    for i in range(0, len(images), batch_size):
        x = to_float(images[i:i + batch_size])
        t = torch.full((len(x),), task, dtype=torch.long)
        noise = torch.randn(len(x), model.latent_dim, generator=gen)
        out = model(x, t, noise=noise)
        loss_sum += float(F.mse_loss(out.x_hat, x) + kld_weight * out.kl().mean()) * len(x)
        det = model(x, t, sample=False)
        per = (det.x_hat - x).pow(2).flatten(1).mean(1)
        mse_sum += float(per.sum())
        psnr_sum += float((10 * torch.log10(1 / per.clamp_min(1e-10))).sum())
    n = len(images)
    return {"test_loss": loss_sum / n, "mse": mse_sum / n, "psnr": psnr_sum / n}


@torch.no_grad()
def fit_priors(model: BAIM, images: np.ndarray, tasks: np.ndarray, draws: int = 4, seed: int = 0) -> None:
    """Fit each task's latent prior to posterior codes z ~ q(z|x) of its common data."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    for t in range(len(model.task_names)):
        x = to_float(images[np.asarray(tasks) == t])
        if len(x) < 2:
            continue
        tt = torch.full((len(x),), t, dtype=torch.long)
        mu, logvar, _ = model.posterior(x, tt)
        codes = [mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar) for _ in range(draws)]
        model.priors[t].fit(torch.cat(codes))


@torch.no_grad()
def task_accuracy(model: BAIM, images: np.ndarray, tasks: np.ndarray) -> float:
    """How often TSGate's classifier picks the right squad for a bare image."""
    model.eval()
    pred = model.tsgate(to_float(images)).argmax(1).numpy()
    return float((pred == np.asarray(tasks)).mean())
