"""Local training of a learner on an edge's private slice (phase 1 of the workflow).

The paper's recipe: Adam (lr 0.005), learning rate × 0.95 after every epoch, objective
MSE + 0.00025·KL. Numeric guards: log σ² is clamped in the model, gradients are clipped,
and a step whose loss is not finite is skipped and counted rather than allowed to poison the
weights. Deterministic for a seed on CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import Recipe
from ..data import to_float
from ..learners import StagedVAE, vae_loss
from ..models import check_epoch, reconstruction_metrics
from ..progress import make_progress


@dataclass
class TrainHistory:
    epochs: list[dict] = field(default_factory=list)
    skipped_steps: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0


def train_learner(
    model: StagedVAE, images: np.ndarray, cfg: Recipe, label: str = "train", eval_images: np.ndarray | None = None
) -> TrainHistory:
    """Train ``model`` in place on uint8 ``images``; returns per-epoch losses."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = to_float(images)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    hist = TrainHistory()
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    start = time.perf_counter()
    with make_progress() as progress:
        bar = progress.add_task(label, total=cfg.epochs * steps_per_epoch)
        for epoch in range(cfg.epochs):
            lr = cfg.lr_at(epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            model.train()
            perm = torch.randperm(len(data), generator=gen)
            tot = tot_mse = tot_kld = 0.0
            seen, skipped_before = 0, hist.skipped_steps
            for i in range(0, len(perm), cfg.batch_size):
                x = data[perm[i : i + cfg.batch_size]]
                x_hat, mu, logvar = model(x)
                loss, mse, kld = vae_loss(x_hat, x, mu, logvar, cfg.kld_weight)
                progress.advance(bar)
                if not torch.isfinite(loss):
                    hist.skipped_steps += 1
                    opt.zero_grad(set_to_none=True)
                    continue
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                tot += float(loss.detach()) * len(x)
                tot_mse += float(mse.detach()) * len(x)
                tot_kld += float(kld.detach()) * len(x)
                seen += len(x)
            row = {
                "epoch": epoch + 1,
                "train_loss": tot / max(seen, 1),
                "train_mse": tot_mse / max(seen, 1),
                "train_kld": tot_kld / max(seen, 1),
                "lr": lr,
            }
            if eval_images is not None:
                row["test_loss"] = reconstruction_metrics(model, eval_images, kld_weight=cfg.kld_weight)["test_loss"]
            check_epoch(label, row, seen, hist.skipped_steps - skipped_before)
            hist.epochs.append(row)
            progress.update(bar, description=f"{label} loss {row['train_loss']:.4f}")
    hist.seconds = time.perf_counter() - start
    hist.images_per_second = cfg.epochs * len(data) / max(hist.seconds, 1e-9)
    model.eval()
    return hist
