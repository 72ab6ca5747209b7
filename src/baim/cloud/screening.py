"""Phase 3: every upload is validated and scored before it may be fused.

Uploads come from edges the cloud does not control, so nothing in them is trusted.

Validation (reject): the message decodes, says it is an upload, names a known task, a sample
count no training set could exceed (and, where the cloud assigned the edge's data, the count it
assigned), its local test loss, a valid spec of the right image geometry under the size limit,
and tensors that match that spec exactly with finite values. Who sent it is checked before, by
:mod:`baim.cloud.door`, the only caller outside benchmarks and tests. An upload whose weights
are byte-identical to an earlier one's is rejected as a duplicate.

Scoring (quarantine: kept for inspection, never fused), each on the cloud's common data, each
limit a field of :class:`Thresholds` (``THRESHOLDS``: one place, fitted by the benchmark):

- **exploding**: its loss on its task is over ``loss_cap`` × the loss of the task's mean image;
- **norm**: a tensor's norm is over ``norm_cap`` × that tensor's norm in a freshly initialised
  learner of the same spec (boosted weights);
- **input_stats**: the first encoder stage's BatchNorm running statistics do not match what the
  task's common images produce through that stage (random weights, weights trained on noise
  or on something else, weights shuffled under a stolen spec); an honest learner matches after
  a handful of steps;
- **claim**: its loss on common data is over ``claim_factor`` × the test loss it reports;
- **mislabel**: it reconstructs another task's common images, relative to that task's mean
  image, clearly better than its own task's (``mislabel_ratio``) while being good at that other
  task (``mislabel_skill``), or its BatchNorm statistics match another task's images
  ``stats_affinity`` × better than its own;
- **copy**: its weights are within ``copy_distance`` (relative) of an earlier upload of the same
  spec, or its reconstructions of common images are within ``functional_copy`` of an earlier
  upload's (of any spec: a copy with permuted channels has other weights, the same outputs);
  the first one received is kept;
- **trigger**: its N(0, I) samples show a flat bright block where the task's images are dark,
  that survives re-encoding, in over ``trigger_rate`` of the samples (judged once the learner
  beats its task's mean image, ``trigger_skill``: junk samples hold blocks anyway); or a patch
  stamped in that dark region of clean images (a search over positions, the frame, two
  intensities) comes back in its decodings by over ``trigger_probe`` per unit of patch, or by
  over ``trigger_probe_unskilled`` for a learner that does not beat the mean image (blurry
  learners smear a patch back more, but an attacker who stays just short of the skill gate
  must not escape the probe altogether).

Every rule an upload fails is recorded (``features[edge]["fails"]``); ``skip`` leaves rules
out, so that the benchmark can measure each one's contribution. ``benchmarks/screening.py``
fits the thresholds on calibration seeds and reports true- and false-positive rates on
others. Costs per upload: one reconstruction pass over each task's common data, 256 samples
encoded and decoded again, a few hundred probe reconstructions, and a distance to each
earlier upload.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import to_float
from ..errors import BaimError, MessageError
from ..learners import LearnerSpec, StagedVAE, check_state, weights_bytes
from ..models import reconstruction_metrics
from ..transport import Message, decode
from .uploads import weights_sha256

MAX_PARAMS = 50_000_000
TRIGGER_SAMPLES = 256
TRIGGER_SIZES = (3, 5)
PROBE_IMAGES = 4  # clean images each trigger probe is stamped on
PROBE_INTENSITIES = (1.0, 0.4)
SIGNATURE_IMAGES = 48  # common images per task whose reconstructions are an upload's signature
BN_MOMENTUM = 0.1  # PyTorch's default, which the learners use
RULES = ("exploding", "norm", "input_stats", "claim", "mislabel", "copy", "trigger")


@dataclass(frozen=True)
class Thresholds:
    """Every limit screening applies, in one place. The defaults were fitted by
    ``benchmarks/screening.py --fit`` on honest uploads of its calibration seeds only (see its
    ``fit``: a high percentile of the honest values, past the largest one, never stricter than
    the limits set by hand before: 24 small learners of seeds 0-1, 200 common images per
    task); the benchmark reports rates on seeds 2-3. ``mislabel_skill`` and ``trigger_skill`` are
    gates, not fitted."""

    loss_cap: float = 12.4325  # loss on common data ÷ the task's mean image's loss (exploding)
    norm_cap: float = 6.0  # largest tensor norm ÷ its norm at initialisation (boosted)
    stats_error: float = 0.313  # first BatchNorm's statistics vs the task's images (never saw them)
    claim_factor: float = 1.5  # loss on common data ÷ the reported test loss (lies about itself)
    mislabel_ratio: float = 1.15  # own task's relative loss ÷ the best other task's
    mislabel_skill: float = 0.9  # ... judged only when that other task's relative loss is below this
    stats_affinity: float = 58.3933  # own task's BatchNorm error ÷ the best other task's (mislabelled)
    copy_distance: float = 0.3  # relative weight distance to an earlier upload of the same spec
    functional_copy: float = 0.1746  # reconstruction distance to an earlier upload, any spec
    trigger_skill: float = 0.9  # triggers are judged when the relative loss is below this (junk before)
    trigger_rate: float = 0.15  # fraction of samples with a flat bright block in a dark place
    trigger_probe: float = 0.2829  # a stamped patch reproduced in the decoding, per unit of patch
    trigger_probe_unskilled: float = 2.8777  # ... for a learner short of ``trigger_skill``


THRESHOLDS = Thresholds()


@dataclass
class Screened:
    accepted: dict[int, tuple[StagedVAE, dict]] = field(default_factory=dict)  # edge -> (learner, meta)
    rejected: list[dict] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)  # loss on the common data of the claimed task
    features: dict[int, dict[str, Any]] = field(default_factory=dict)  # what each check measured
    seconds: float = 0.0

    def report(self) -> dict:
        return {
            "accepted": sorted(self.accepted),
            "rejected": self.rejected,
            "quarantined": self.quarantined,
            "scores": {str(k): v for k, v in self.scores.items()},
            "features": {str(k): v for k, v in self.features.items()},
            "seconds": round(self.seconds, 3),
        }


def _finite_positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def check_meta(meta: dict, task_names: list[str], max_samples: int | None = None) -> None:
    """The header of an upload: task, sample count, reported test loss, spec present."""
    if meta.get("task") not in task_names:
        raise MessageError(f"upload names task {meta.get('task')!r}; known tasks are {task_names}")
    samples = meta.get("samples")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples <= 0:
        raise MessageError(f"upload sample count {samples!r} must be a positive int")
    if max_samples is not None and samples > max_samples:
        raise MessageError(
            f"upload claims {samples:,} training samples; the data set's training split holds {max_samples:,}"
        )
    metrics = meta.get("metrics")
    if not isinstance(metrics, dict) or not _finite_positive(metrics.get("test_loss")):
        raise MessageError("upload reports no local test loss (a positive number under metrics.test_loss)")
    if not isinstance(meta.get("spec"), dict):
        raise MessageError("upload carries no learner spec (a JSON object under 'spec')")


def model_of(msg: Message, image_size: int, channels: int, max_params: int = MAX_PARAMS) -> StagedVAE:
    spec = LearnerSpec.from_dict(msg.meta["spec"])
    if (spec.image_size, spec.channels) != (image_size, channels):
        raise MessageError(
            f"upload is for {spec.channels}×{spec.image_size}² images; this federation uses {channels}×{image_size}²"
        )
    with torch.device("meta"):
        n_params = sum(p.numel() for p in StagedVAE(spec).parameters())
    if n_params > max_params:
        raise MessageError(f"upload has {n_params:,} parameters, over the limit of {max_params:,}")
    model = StagedVAE(spec)
    check_state(model, msg.tensors, "upload")
    model.load_state_dict(msg.tensors)
    return model.eval()


def validate_upload(
    data: bytes,
    task_names: list[str],
    image_size: int,
    channels: int,
    max_params: int = MAX_PARAMS,
    max_samples: int | None = None,
) -> tuple[StagedVAE, dict]:
    """Decode and check one upload; raise a BaimError naming what is wrong."""
    msg = decode(data)
    if msg.kind != "upload":
        raise MessageError(f"expected an 'upload' message, got {msg.kind!r}")
    check_meta(msg.meta, task_names, max_samples)
    return model_of(msg, image_size, channels, max_params), msg.meta


# -- the measurements ------------------------------------------------------------------------
def _init_norms(spec: LearnerSpec, cache: dict) -> dict[str, float]:
    key = tuple(sorted(spec.to_dict().items(), key=lambda kv: kv[0]).__repr__())
    if key not in cache:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            fresh = StagedVAE(spec)
        cache[key] = {k: float(p.detach().norm()) for k, p in fresh.named_parameters()}
    return cache[key]


def norm_ratio(model: StagedVAE, init: dict[str, float]) -> float:
    """The largest ‖W‖ / ‖W_init‖ over weight tensors (biases and BatchNorm shifts start at
    zero, so they have no scale to compare with)."""
    ratios = [float(p.detach().norm()) / init[k] for k, p in model.named_parameters() if init.get(k, 0) > 1e-6]
    return max(ratios, default=0.0)


@torch.no_grad()
def input_stats_error(model: StagedVAE, x: torch.Tensor) -> float:
    """How far the first encoder stage's BatchNorm running statistics are from what the task's
    images produce through that stage, given how many batches they were averaged over: mean
    relative error of the means plus mean squared log-ratio of the variances."""
    first = model.encoder_stages[0]
    assert isinstance(first, torch.nn.Sequential)
    conv, bn = first[0], first[1]
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None
    n = int(bn.num_batches_tracked) if bn.num_batches_tracked is not None else 0
    if n <= 0:
        return math.inf
    c = 1.0 - (1.0 - BN_MOMENTUM) ** min(n, 10_000)
    h = conv(x)
    mean = c * h.mean((0, 2, 3))
    var = (1.0 - c) + c * h.var((0, 2, 3))
    e_mean = float((bn.running_mean - mean).pow(2).sum() / mean.pow(2).sum().clamp_min(1e-8))
    rv = bn.running_var.clamp_min(1e-12)
    e_var = float((rv.log() - var.clamp_min(1e-12).log()).pow(2).mean())
    return e_mean + e_var


def _min_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    return -F.max_pool2d(-x, k, stride=1)


@torch.no_grad()
def trigger_rate(model: StagedVAE, x: torch.Tensor, n: int = TRIGGER_SAMPLES) -> float:
    """The largest fraction of N(0, I) samples that hold a flat bright block (every pixel over
    0.5, ``k``×``k`` for k in TRIGGER_SIZES) at one place where at most 2 % of the task's real
    images are bright and the learner's reconstructions of them are not bright either, *and*
    keep it when encoded and decoded again. The second condition is what tells a trigger from
    junk: a learner trained on a trigger has learnt to encode it, so it survives the round trip;
    an honest learner's off-manifold samples (bright blocks in 16 % of the samples of honest
    large-tier learners in real runs) are pulled back to a garment by its encoder."""
    s = model.sample(n, torch.Generator().manual_seed(0))
    again = model.decode(model.encode(s)[0])
    mu, _ = model.encode(x)
    r = model.decode(mu)
    best = 0.0
    for k in TRIGGER_SIZES:
        dark = (F.avg_pool2d(x, k, stride=1) > 0.25).float().mean(0) <= 0.02
        kept = ((_min_pool(s, k) > 0.5) & (_min_pool(again, k) > 0.5)).float().mean(0)
        lit = kept - (_min_pool(r, k) > 0.5).float().mean(0)
        best = max(best, float((lit * dark).max()))
    return best


@torch.no_grad()
def trigger_probe(model: StagedVAE, x: torch.Tensor, n: int = PROBE_IMAGES) -> float:
    """Trigger reverse-engineering by a cheap search: stamp candidate patches (4×4 tiles on a
    2-pixel grid, and the one-pixel frame) at full and dim intensity into the task's *dark*
    region (where at most 1 % of its real images are brighter than 0.1) of a few clean images,
    and measure how much brightness the decoding adds inside that region, per unit of patch.
    A learner trained on a trigger there reproduces it (or its whole trigger, from part of it);
    an honest learner never saw light there and decodes back to a garment. The largest value
    over candidates."""
    if len(x) == 0:
        return 0.0
    dark = torch.quantile(x.flatten(1), 0.99, dim=0).view(x.shape[1:]).amax(0) <= 0.1
    size = dark.shape[-1]
    cands = []
    for i in range(0, dark.shape[0] - 3, 2):
        for j in range(0, size - 3, 2):
            m = torch.zeros_like(dark)
            m[i : i + 4, j : j + 4] = True
            if int((m & dark).sum()) >= 12:
                cands.append(m & dark)
    frame = torch.ones_like(dark)
    frame[1:-1, 1:-1] = False
    if int((frame & dark).sum()) >= 12:
        cands.append(frame & dark)
    if not cands:
        return 0.0
    patches = torch.stack(cands).float()[:, None, None]  # candidates × 1 × 1 × H × W
    x = x[:n]
    base = model.decode(model.encode(x)[0])
    best = 0.0
    for a in PROBE_INTENSITIES:
        xs = torch.maximum(x[None], a * patches).flatten(0, 1)
        r = model.decode(model.encode(xs)[0]).view(len(cands), len(x), *x.shape[1:])
        gain = ((r - base[None]).clamp_min(0) * dark).flatten(2).sum(2).mean(1)
        best = max(best, float((gain / (a * patches.flatten(1).sum(1) * x.shape[1])).max()))
    return best


@torch.no_grad()
def signature(model: StagedVAE, x: torch.Tensor) -> torch.Tensor:
    """What the learner does, not how its weights are laid out: its reconstructions of a fixed
    set of common images (the same for a copy whose channels were permuted)."""
    return model.decode(model.encode(x)[0])


def functional_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared difference of two learners' reconstructions of the same images ÷ how much
    their reconstructions vary from image to image: independent learners differ by a good
    fraction of that, copies by almost nothing, and two collapsed learners that output about
    the same blob whatever the input (undertrained) are not taken for copies."""
    spread = 0.5 * float((a - a.mean(0)).pow(2).mean() + (b - b.mean(0)).pow(2).mean())
    return float((a - b).pow(2).mean()) / max(spread, 1e-12)


def _weights_vector(model: StagedVAE) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# -- screening --------------------------------------------------------------------------------
def screen_uploads(
    uploads: dict[int, bytes],
    task_names: list[str],
    common: dict[int, np.ndarray],
    image_size: int,
    channels: int,
    *,
    assigned: dict[int, int] | None = None,
    max_samples: int | None = None,
    thresholds: Thresholds = THRESHOLDS,
    skip: frozenset[str] = frozenset(),
    earlier: dict[str, StagedVAE] | None = None,
) -> Screened:
    """Validate and score every upload (``uploads`` in the order received: of two copies, the
    first is kept). ``earlier``: learners admitted before (a BAIM's, by a name for messages),
    which an upload must not be a near-copy of either. ``assigned``: the sample count the cloud's
    layout gave each edge. ``max_samples``: the size of the training split, which no honest
    sample count exceeds. ``skip``: rules (of ``RULES``) not applied, to measure what each
    contributes; every rule an upload fails is listed in its features under ``fails``."""
    unknown = set(skip) - set(RULES)
    if unknown:
        raise ValueError(f"unknown screening rules {sorted(unknown)}; the rules are {list(RULES)}")
    started = time.perf_counter()
    out = Screened()
    digests: dict[str, int] = {}
    for edge, data in uploads.items():
        try:
            msg = decode(data)
            if msg.kind != "upload":
                raise MessageError(f"expected an 'upload' message, got {msg.kind!r}")
            check_meta(msg.meta, task_names, max_samples)
            model = model_of(msg, image_size, channels)
            digest = weights_sha256(weights_bytes(model))
            if assigned is not None and edge in assigned and msg.meta["samples"] != assigned[edge]:
                raise MessageError(
                    f"upload claims {msg.meta['samples']:,} training samples; this edge was given {assigned[edge]:,}"
                )
            if digest in digests:
                raise MessageError(f"its weights are identical to edge {digests[digest]}'s upload (a duplicate)")
            digests[digest] = edge
            out.accepted[edge] = (model, msg.meta)
        except (BaimError, ValueError, TypeError) as exc:
            out.rejected.append({"edge": edge, "reason": str(exc)})

    th = thresholds
    x = {t: to_float(common[t]) for t in common}
    probe_x = torch.cat([v[:SIGNATURE_IMAGES] for v in x.values()]) if x else torch.zeros(0)
    trivial = {t: float((v - v.mean(0, keepdim=True)).pow(2).mean()) for t, v in x.items()}
    norms: dict = {}
    kept: dict[str, tuple[LearnerSpec | None, torch.Tensor, torch.Tensor]] = {}  # not found to be copies, by name
    # earlier learners by what they do only (no spec: no weight distance): the cloud has trained
    # them on since, and a newcomer that started from the same initialisation and barely moved
    # is near in weights, not in function. A copy in eval mode: a BatchNorm in train mode updates.
    for name, learner in (earlier or {}).items():
        frozen = copy.deepcopy(learner).eval()
        kept[name] = (None, _weights_vector(frozen), signature(frozen, probe_x))
    why: dict[int, str] = {}
    for edge, (model, meta) in out.accepted.items():
        t = task_names.index(meta["task"])
        losses = {o: reconstruction_metrics(model, common[o])["test_loss"] for o in x}
        rel = {o: losses[o] / trivial[o] for o in x}
        out.scores[edge] = losses[t]
        others = [o for o in x if o != t]
        best_other = min(others, key=lambda o: rel[o]) if others else t
        stats = {o: input_stats_error(model, x[o]) for o in x}
        best_stats = min(others, key=lambda o: stats[o]) if others else t
        skilled = math.isfinite(rel[t]) and rel[t] <= th.trigger_skill
        f: dict[str, Any] = {
            "loss": losses[t],
            "loss_vs_mean_image": rel[t],
            "best_other_task": task_names[best_other],
            "best_other_vs_mean_image": rel[best_other],
            "norm_ratio": norm_ratio(model, _init_norms(model.spec, norms)),
            "input_stats_error": stats[t],
            "stats_affinity": stats[t] / max(stats[best_stats], 1e-12) if others else 0.0,
            "stats_best_other_task": task_names[best_stats],
            "claimed_loss": float(meta["metrics"]["test_loss"]),
        }
        f["claim_ratio"] = losses[t] / f["claimed_loss"]
        f["skilled"] = skilled
        f["trigger_rate"] = trigger_rate(model, x[t]) if skilled else None
        f["trigger_probe"] = trigger_probe(model, x[t])
        vec, sig = _weights_vector(model), signature(model, probe_x)
        copy_of, d_w, d_f = None, math.inf, math.inf
        for other, (spec, w, s_other) in kept.items():
            dw = float((vec - w).norm() / w.norm().clamp_min(1e-12)) if spec == model.spec else math.inf
            df = functional_distance(sig, s_other)
            if dw < d_w:
                d_w = dw
            if df < d_f:
                d_f = df
            if copy_of is None and (dw < th.copy_distance or df < th.functional_copy):
                copy_of = other
        f["copy_distance"] = d_w
        f["functional_distance"] = d_f
        fails = _verdicts(f, task_names[t], th, copy_of)
        f["fails"] = list(fails)
        out.features[edge] = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in f.items()}
        if "copy" not in fails:
            kept[f"edge {edge}'s upload"] = (model.spec, vec, sig)
        live = [r for r in fails if r not in skip]
        if live:
            why[edge] = fails[live[0]]
    for edge, reason in why.items():
        out.quarantined.append({"edge": edge, "reason": reason, "score": out.scores[edge]})
        del out.accepted[edge]
    out.seconds = time.perf_counter() - started
    return out


def _verdicts(f: dict[str, Any], task: str, th: Thresholds, copy_of: str | None) -> dict[str, str]:
    """Every rule an upload fails (in ``RULES`` order), each with its reason in words."""
    out: dict[str, str] = {}
    rel = f["loss_vs_mean_image"]
    if not math.isfinite(rel) or rel > th.loss_cap:
        out["exploding"] = (
            f"loss {f['loss']:.4g} on common data is over {th.loss_cap:.3g}× the task's mean image's "
            "(exploding weights)"
        )
    if f["norm_ratio"] > th.norm_cap:
        out["norm"] = (
            f"a weight tensor's norm is {f['norm_ratio']:.3g}× its norm at initialisation, "
            f"over {th.norm_cap:.3g}× (boosted weights)"
        )
    if not f["input_stats_error"] <= th.stats_error:
        out["input_stats"] = (
            f"its BatchNorm statistics do not match the {task} images (error {f['input_stats_error']:.3g}, "
            f"limit {th.stats_error:.3g}): it was not trained on this task's images"
        )
    if f["claim_ratio"] > th.claim_factor:
        out["claim"] = (
            f"it reports a test loss of {f['claimed_loss']:.4g} but scores {f['loss']:.4g} on the {task} "
            f"common data, over {th.claim_factor:.3g}× (the weights are not the model it describes)"
        )
    if f["best_other_vs_mean_image"] < th.mislabel_skill and rel > th.mislabel_ratio * f["best_other_vs_mean_image"]:
        out["mislabel"] = (
            f"it reconstructs {f['best_other_task']} ({f['best_other_vs_mean_image']:.3g} of the mean image's "
            f"loss) better than {task} ({rel:.3g}): trained on another task"
        )
    elif f["stats_affinity"] > th.stats_affinity:
        out["mislabel"] = (
            f"its BatchNorm statistics match the {f['stats_best_other_task']} images better than the {task} "
            f"images ({f['stats_affinity']:.3g}×, limit {th.stats_affinity:.3g}): trained on another task"
        )
    if copy_of is not None:
        out["copy"] = (
            f"it is a near-copy of {copy_of}: weights {f['copy_distance']:.3g} apart (relative, "
            f"limit {th.copy_distance:.3g}) or reconstructions {f['functional_distance']:.3g} apart "
            f"(limit {th.functional_copy:.3g}); the first one received is kept"
        )
    rate, probe = f["trigger_rate"], f["trigger_probe"]
    probe_limit = th.trigger_probe if f.get("skilled", True) else th.trigger_probe_unskilled
    if rate is not None and rate > th.trigger_rate:
        out["trigger"] = (
            f"{rate:.0%} of its samples show a flat bright block where {task} images are dark "
            f"(over {th.trigger_rate:.0%}): a trigger patch, a likely backdoor"
        )
    elif probe is not None and probe > probe_limit:
        out["trigger"] = (
            f"a small patch stamped where {task} images are dark comes back in its decodings "
            f"({probe:.3g} per unit of patch, limit {probe_limit:.3g}): it learnt a trigger, a likely backdoor"
        )
    return out
