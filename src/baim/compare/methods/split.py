"""``sl``: split learning (U-shaped, so labels, here the images themselves, stay at the edge).

Each edge's model is its tier's learner, cut in three: the edge runs the first encoder stage
and the last decoder stage with the image head; the cloud runs the rest (encoder stages 2..S,
posterior head, latent-in map, decoder stages 1..S-1), one middle per edge. Every step four
messages cross the network: the first stage's activations up, the middle's output down, the
gradient of the reconstruction loss with respect to that output up, and the gradient with
respect to the first stage's output down. The cloud adds β·KL (the posterior is in its part);
each side clips and steps its own parameters with the edges' recipe.

Generation needs the cloud too: z is decoded by the cloud's middle and finished at the edge
(one round trip). Quality is scored on the assembled learner, which computes exactly what the
split one does.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save as save_bytes

from ...data import to_float, to_uint8
from ...learners import StagedVAE, plain_state
from ...models import reconstruction_metrics
from ...models.evaluation import learner_prior
from ...models.fit import EarlyStopping
from ...transport import Message
from ..common import Context, build
from ..measure import Meter, latency_ms
from ..row import MethodRow, method_row


def edge_params(m: StagedVAE) -> list[torch.nn.Parameter]:
    return [*m.encoder_stages[0].parameters(), *m.decoder_stages[-1].parameters(), *m.image_head.parameters()]


def cloud_params(m: StagedVAE) -> list[torch.nn.Parameter]:
    mods = [*m.encoder_stages[1:], m.posterior_head, m.latent_in, *m.decoder_stages[:-1]]
    return [p for mod in mods for p in mod.parameters()]


def _part_bytes(m: StagedVAE, edge: bool) -> int:
    """Bytes of the edge's (or the cloud's) part as stored (safetensors)."""
    names = ("encoder_stages.0.", f"decoder_stages.{len(m.decoder_stages) - 1}.", "image_head.")
    return len(save_bytes({k: v for k, v in plain_state(m).items() if k.startswith(names) == edge}))


def cloud_middle(m: StagedVAE, h1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h = h1
    for stage in m.encoder_stages[1:]:
        h = stage(h)
    mu, logvar = m.posterior(h)
    d = m.latent_to_map(m.reparameterize(mu, logvar))
    for stage in m.decoder_stages[:-1]:
        d = stage(d)
    return d, mu, logvar


def run_sl(ctx: Context) -> MethodRow:
    wire, meter = ctx.wire(), Meter()
    epochs = ctx.settings.sl_epochs
    models = {e: build(ctx.tier_of(e), ctx.ds, ctx.seed + 1000 * e) for e in ctx.edges}
    best_epochs: dict[int, int] = {}
    t0 = time.perf_counter()
    with meter.counting():
        for e, m in models.items():
            recipe = replace(ctx.recipe(1000 * e, ctx.tier_of(e)), epochs=epochs)
            val = ctx.val_images(e)
            stopper = EarlyStopping(ctx.settings.patience) if ctx.settings.patience and len(val) else None
            with meter.edge("training"):
                data = to_float(ctx.local_images(e))
                edge_opt = torch.optim.Adam(edge_params(m), lr=recipe.lr)
                gen = torch.Generator().manual_seed(recipe.seed)
            with meter.cloud("training"):
                cloud_opt = torch.optim.Adam(cloud_params(m), lr=recipe.lr)
                torch.manual_seed(recipe.seed)
            m.train()
            for epoch in range(epochs):
                for opt in (edge_opt, cloud_opt):
                    for g in opt.param_groups:
                        g["lr"] = recipe.lr_at(epoch)
                perm = torch.randperm(len(data), generator=gen)
                for i in range(0, len(perm), recipe.batch_size):
                    with meter.edge("training"):
                        x = data[perm[i : i + recipe.batch_size]]
                        h1 = m.encoder_stages[0](x)
                    got = wire.up(e, Message("sl.activations", {}, {"h": h1.detach()}))
                    with meter.cloud("training"):
                        h1c = got.tensors["h"].requires_grad_()
                        d, mu, logvar = cloud_middle(m, h1c)
                        kld = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
                    got = wire.down(e, Message("sl.activations", {}, {"d": d.detach()}))
                    with meter.edge("training"):
                        a = got.tensors["d"].requires_grad_()
                        x_hat = m.to_image(m.decoder_stages[-1](a))
                        mse = F.mse_loss(x_hat, x)
                        edge_opt.zero_grad(set_to_none=True)
                        mse.backward()
                    assert a.grad is not None
                    got = wire.up(e, Message("sl.gradients", {}, {"g": a.grad}))
                    with meter.cloud("training"):
                        cloud_opt.zero_grad(set_to_none=True)
                        torch.autograd.backward([d, recipe.kld_weight * kld], [got.tensors["g"], None])
                        torch.nn.utils.clip_grad_norm_(cloud_params(m), recipe.grad_clip)
                        cloud_opt.step()
                    assert h1c.grad is not None
                    got = wire.down(e, Message("sl.gradients", {}, {"g": h1c.grad}))
                    with meter.edge("training"):
                        h1.backward(got.tensors["g"])
                        torch.nn.utils.clip_grad_norm_(edge_params(m), recipe.grad_clip)
                        edge_opt.step()
                if stopper is not None:  # the validation pass is measurement: off the meter and the wire
                    score = reconstruction_metrics(m, val, kld_weight=recipe.kld_weight, seed=recipe.seed)
                    if stopper.update(m, epoch + 1, score["test_loss"]):
                        break
                    m.train()
            if stopper is not None:
                stopper.restore(m)
                best_epochs[e] = stopper.best_epoch
            m.eval()
    wall = time.perf_counter() - t0
    # generation: the edge sends z's request, the cloud decodes to its last map, the edge finishes
    lat, inference_bytes, rows = [], 0, []
    for e, m in models.items():
        prior = learner_prior(m, ctx.local_images(e), ctx.seed)  # fitted at the edge's request, on its codes
        mark = len(wire.ledger.messages)

        @torch.no_grad()
        def serve(e: int = e, m: StagedVAE = m, prior: object = prior) -> np.ndarray:
            z = prior.sample(16, torch.Generator().manual_seed(ctx.seed))  # type: ignore[attr-defined]
            got = wire.up(e, Message("sl.generate", {}, {"z": z}), "inference")
            d = m.latent_to_map(got.tensors["z"])
            for stage in m.decoder_stages[:-1]:
                d = stage(d)
            got = wire.down(e, Message("sl.activations", {}, {"d": d}), "inference")
            return to_uint8(m.to_image(m.decoder_stages[-1](got.tensors["d"])))

        lat.append(latency_ms(serve))
        inference_bytes = sum(x["bytes"] for x in wire.ledger.messages[mark : mark + 2])
        rows.append(ctx.evaluate_edge(e, m))
    ctx.cache.setdefault("wires", {})["sl"] = wire
    return method_row(
        "sl",
        "split learning: the edge runs the first encoder stage and the last decoder stage, the "
        f"cloud the middle (one per edge); activations and gradients cross every step; {epochs} epochs",
        {
            "epochs": epochs,
            "patience": ctx.settings.patience,
            "best_epoch": {str(e): b for e, b in best_epochs.items()},
            "cut": "edge: E1 + D_S + image head; cloud: E2..E_S, heads, D1..D_S-1",
        },
        messages=wire.ledger.messages,
        raw_data_bytes=wire.raw_data_bytes,
        compute=meter,
        storage=(
            sum(_part_bytes(m, True) for m in models.values()),
            sum(_part_bytes(m, False) for m in models.values()),
        ),
        latency_ms=lat,
        round_trips=1,
        wall_s=wall,
        per_edge=rows,
        inference_bytes_per_request=inference_bytes,
        privacy_note="no image leaves the edge, but the first stage's activations (a 2x-downsampled "
        "feature map of every training image) do, every step",
    )
