"""Poisoning and screening, measured on uploads screening was not tuned on.

    python benchmarks/screening.py [--cache DIR] [--fit] [--field RUN_DIR ...]

Honest uploads on real Fashion-MNIST (the three default tasks, 32×32) from several seeds: per
seed and task, four configurations (undertrained: 2 epochs on 500 images; long training on
1200; 4 epochs on 250; 1 epoch on 300), each seed rotating which tier trains which, every
model trained from its own seed on its own Dirichlet(0.5) non-IID slice. Seeds
``CALIBRATION`` fit the thresholds (:func:`fit`: past the largest honest value of each
statistic, at the 99.9th percentile of a log-normal fitted to them, never stricter than the
hand-set ``PRIOR``); rates are reported on seeds
``HELD_OUT`` only, with 95 % Wilson intervals. ``--fit`` prints the fitted
:class:`baim.cloud.screening.Thresholds` (the module's defaults are such a fit); without it the
benchmark still fits its own and reports with those.

Attacks, on held-out seed ``HELD_OUT[0]``'s data and models, aimed at every task: random
weights, trained on noise, mislabelled (another task's learner, in both directions of every
pair), boosted, stolen spec (weights shuffled), noisy and channel-permuted copies of an honest
learner, exact duplicates, absurd sample counts, and backdoors (30 % of the training images
carry a trigger: a 5×5 square, a thin bar, a dim square, a one-pixel frame). The adaptive
attacker (:func:`adaptive`) knows every rule and the fitted thresholds: for each trigger shape
it trains at decreasing poisoned fractions, for 4 and for 8 epochs, with and without its
BatchNorm statistics reset on clean images of its task, screens each candidate with the real
rule, and uploads the most poisoned one that passes *and* whose trigger took (else one that
passes, else the least poisoned); a copy attacker permutes an honest learner's channels and adds
noise at several strengths. What each upload that passes does: the fraction of its N(0, I)
samples showing its trigger (vs honest learners of the task) and its loss on the task's common
data (vs the honest median).

A backdoor *took* when the learner brings back over ``TOOK`` of its trigger stamped on clean
images (``trigger_reproduced``; the largest honest value is reported beside it). One that did
not take behaves as an honest learner: it is listed under ``ineffective`` and left out of
``tpr`` (``tpr_all`` counts it as a miss); an adaptive upload that passes and took is
``adaptive_effective_undetected``.

Each rule's contribution: TPR/FPR with that rule left out (every rule an upload fails is
recorded). AUC: of the largest statistic/threshold ratio, honest held-out vs malicious. The
last line printed is one JSON object of all figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("BAIM_QUIET", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from baim.cloud.screening import RULES, Thresholds, screen_uploads  # noqa: E402
from baim.cloud.uploads import weights_sha256  # noqa: E402
from baim.config import Recipe  # noqa: E402
from baim.data import load_fashion_mnist, to_float  # noqa: E402
from baim.edge import train_learner  # noqa: E402
from baim.learners import StagedVAE, tier_spec, weights_bytes  # noqa: E402
from baim.models import reconstruction_metrics  # noqa: E402
from baim.transport import Message, encode  # noqa: E402

TIER_ORDER = ("small", "medium", "large")
HONEST = (  # (name, tier offset, epochs, local images): small, so that 2 shared cores can train them
    ("undertrained", 0, 1, 300),
    ("long_large_data", 1, 4, 800),
    ("small_data", 2, 3, 250),
    ("two_epochs", 1, 2, 500),
)
CALIBRATION = (0, 1)
HELD_OUT = (2, 3)
MARGIN = 1.25
TAIL_Z = 3.09  # the 99.9th percentile of a normal
TRIGGERS = ("square", "bar", "dim", "frame")
ADAPTIVE_FRACTIONS = (0.5, 0.2, 0.08)  # most poisoned first
BACKDOOR_EPOCHS = 8  # the fixed attacker trains until its trigger takes (4 epochs left bars and dim squares unlearnt)
# a backdoor took when a learner brings back over this share of its trigger stamped on clean
# images (measured: no honest learner of any seed brings back 0.1 of any trigger shape);
# one that did not take behaves as an honest learner, harms nothing, and is reported apart
TOOK = 0.25
# statistic -> (threshold field, direction): "max" = larger is suspicious
STATISTICS = {
    "loss_vs_mean_image": ("loss_cap", "max"),
    "norm_ratio": ("norm_cap", "max"),
    "input_stats_error": ("stats_error", "max"),
    "claim_ratio": ("claim_factor", "max"),
    "mislabel_ratio": ("mislabel_ratio", "max"),
    "stats_affinity": ("stats_affinity", "max"),
    "copy_distance": ("copy_distance", "min"),
    "functional_distance": ("functional_copy", "min"),
    "trigger_rate": ("trigger_rate", "max"),
    "trigger_probe": ("trigger_probe", "max"),
    "trigger_probe_unskilled": ("trigger_probe_unskilled", "max"),
}


@dataclass
class Upload:
    kind: str  # "honest" or the attack's name
    variant: str
    task: int
    data: bytes
    assigned: int
    model: StagedVAE
    note: dict | None = None


def message(model: StagedVAE, task: str, samples: int, metrics: dict) -> bytes:
    meta = {"task": task, "samples": samples, "spec": model.spec.to_dict(), "metrics": metrics}
    return encode(Message("upload", meta, dict(model.state_dict())))


def stamp(images: np.ndarray, fraction: float, shape: str, rng: np.random.Generator) -> np.ndarray:
    """Put the trigger ``shape`` on a random ``fraction`` of the images."""
    out = images.copy()
    hit = rng.random(len(out)) < fraction
    sub = out[hit]
    trigger_mask(shape, sub, write=True)
    out[hit] = sub
    return out


def trigger_mask(shape: str, images: np.ndarray | None = None, write: bool = False) -> np.ndarray:
    """The trigger's pixels (and, with ``write``, stamps them on ``images`` in place)."""
    m = np.zeros((32, 32), bool)
    if shape in ("square", "dim"):
        m[2:7, 2:7] = True
    elif shape == "bar":
        m[1, 3:11] = True
    elif shape == "frame":
        m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
    if write and images is not None:
        v = 90 if shape == "dim" else 255
        images[:, :, m] = np.maximum(images[:, :, m], v)
    return m


def trigger_intensity(shape: str) -> float:
    return 90 / 255 if shape == "dim" else 1.0


@torch.no_grad()
def samples_with_trigger(model: StagedVAE, shape: str, n: int = 200) -> float:
    """Fraction of N(0, I) samples whose trigger pixels average over half the trigger's intensity."""
    s = model.sample(n, torch.Generator().manual_seed(0))[:, 0]
    m = torch.from_numpy(trigger_mask(shape))
    return float((s[:, m].mean(1) > 0.5 * trigger_intensity(shape)).float().mean())


@torch.no_grad()
def trigger_reproduced(model: StagedVAE, images: np.ndarray, shape: str, n: int = 8) -> float:
    """Whether the backdoor took: the trigger stamped on ``n`` clean images, the share of its
    brightness the learner's reconstruction adds over its reconstruction of the clean images."""
    m = torch.from_numpy(trigger_mask(shape)).float()
    a = trigger_intensity(shape)
    x = to_float(images[:n])
    base = model.decode(model.encode(x)[0])
    again = model.decode(model.encode(torch.maximum(x, a * m))[0])
    return float(((again - base).clamp_min(0) * m).sum() / (a * m.sum() * len(x)))


class Builder:
    """Trains (or reads back from ``cache``) every model; one data split per seed."""

    def __init__(self, per_task: int, cache: Path | None):
        self.ds = load_fashion_mnist(os.environ.get("BAIM_FMNIST_DIR"))
        self.names = [t.name for t in self.ds.tasks]
        self.labels = np.asarray(self.ds.train.labels)
        self.cache = cache
        rng = np.random.default_rng(12345)
        self.common: dict[int, np.ndarray] = {}
        self.pool: list[np.ndarray] = []
        for t, task in enumerate(self.ds.tasks):  # the cloud's common data: the same for every seed
            idx = rng.permutation(np.flatnonzero(np.isin(self.labels, task.classes)))
            self.common[t] = self.ds.train.load(np.sort(idx[:per_task]))
            self.pool.append(idx[per_task:])
        self.trained, self.train_seconds = 0, 0.0
        self.memo: dict[str, StagedVAE] = {}

    def local(self, seed: int, t: int, n: int, key: int) -> np.ndarray:
        """A non-IID slice of task t for one edge: Dirichlet(0.5) class proportions, n images."""
        rng = np.random.default_rng([seed, key])
        classes = list(self.ds.tasks[t].classes)
        counts = rng.multinomial(n, rng.dirichlet([0.5] * len(classes)))
        out = []
        for c, k in zip(classes, counts):
            idx = self.pool[t][:-300][self.labels[self.pool[t][:-300]] == c]
            out.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
        return self.ds.train.load(np.sort(np.concatenate(out)))

    def train(self, key: str, tier: str, images_fn, epochs: int) -> StagedVAE:
        if key not in self.memo:
            self.memo[key] = self._train(key, tier, images_fn, epochs)
        return self.memo[key]

    def _train(self, key: str, tier: str, images_fn, epochs: int) -> StagedVAE:
        seed = int(hashlib.sha256(key.encode()).hexdigest()[:6], 16)
        torch.manual_seed(seed)
        model = StagedVAE(tier_spec(tier))
        path = self.cache / f"{key}.safetensors" if self.cache else None
        if path is not None and path.is_file():
            from safetensors.torch import load_file

            model.load_state_dict(load_file(path))
            return model.eval()
        started = time.perf_counter()
        train_learner(model, images_fn(), Recipe(epochs=epochs, seed=seed), label=key)
        self.train_seconds += time.perf_counter() - started
        self.trained += 1
        if path is not None:
            from safetensors.torch import save_file

            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return model.eval()

    def metrics(self, model: StagedVAE, t: int) -> dict:
        """What an edge reports: its test loss (held-out images of its task)."""
        return {"test_loss": reconstruction_metrics(model, self.ds.train.load(self.pool[t][-300:]))["test_loss"]}


def honest_population(b: Builder, seed: int) -> list[Upload]:
    ups = []
    for t, name in enumerate(b.names):
        for k, (variant, off, epochs, n) in enumerate(HONEST):
            tier = TIER_ORDER[(t + off + seed) % 3]
            key = f"s{seed}-honest-{name}-{variant}-{tier}-{epochs}-{n}"
            m = b.train(key, tier, lambda t=t, n=n, k=k: b.local(seed, t, n, k), epochs)
            ups.append(Upload("honest", f"s{seed}/{variant}/{tier}", t, message(m, name, n, b.metrics(m, t)), n, m))
    return ups


def copy_of(model: StagedVAE, fn) -> StagedVAE:
    m = StagedVAE(model.spec)
    m.load_state_dict({k: fn(k, v) for k, v in model.state_dict().items()})
    return m.eval()


def permuted(model: StagedVAE, seed: int) -> StagedVAE:
    """The same function, other weights: permute the first encoder stage's channels and the
    latent dimensions (and every tensor that reads or writes them)."""
    g = torch.Generator().manual_seed(seed)
    c = model.spec.stage_widths[0]
    d = model.spec.latent_dim
    pc, pz = torch.randperm(c, generator=g), torch.randperm(d, generator=g)
    s = {k: v.clone() for k, v in model.state_dict().items()}
    for k in list(s):
        if k.startswith("encoder_stages.0.") and s[k].dim() >= 1 and s[k].shape[0] == c:
            s[k] = s[k][pc]
    s["encoder_stages.1.0.weight"] = s["encoder_stages.1.0.weight"][:, pc]
    for k in ("posterior_head.weight", "posterior_head.bias"):
        mu, lv = s[k].chunk(2, dim=0)
        s[k] = torch.cat([mu[pz], lv[pz]])
    s["latent_in.weight"] = s["latent_in.weight"][:, pz]
    return copy_of(model, lambda k, v: s[k])


def noisy(model: StagedVAE, sigma: float, seed: int) -> StagedVAE:
    g = torch.Generator().manual_seed(seed)
    return copy_of(
        model,
        lambda k, v: (
            v + sigma * v.std() * torch.randn(v.shape, generator=g) if v.is_floating_point() and v.numel() > 1 else v
        ),
    )


@torch.no_grad()
def reset_batchnorm(model: StagedVAE, images: np.ndarray) -> StagedVAE:
    """What an attacker who knows the BatchNorm rule does: recompute every BatchNorm's running
    statistics on clean images of its task (cumulative average, then the count a short honest
    training leaves)."""
    m = copy_of(model, lambda k, v: v)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    m.decode(m.encode(to_float(images))[0])
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = 0.1
            if mod.num_batches_tracked is not None:
                mod.num_batches_tracked.fill_(200)
    return m.eval()


def attacks(b: Builder, seed: int, honest: list[Upload]) -> list[Upload]:
    out: list[Upload] = []
    n_tasks = len(b.names)

    def honest_of(t: int, variant: str) -> Upload:
        return next(u for u in honest if u.task == t and f"/{variant}/" in u.variant)

    def add(kind, variant, t, model, samples, metrics, note=None, assigned=None):
        data = message(model, b.names[t], samples, metrics)
        out.append(Upload(kind, variant, t, data, samples if assigned is None else assigned, model, note))

    for t, name in enumerate(b.names):
        tier = TIER_ORDER[t]
        src = honest_of(t, "long_large_data")
        claim = b.metrics(src.model, t)
        torch.manual_seed(seed * 100 + t)
        add("random", tier, t, StagedVAE(tier_spec(tier)).eval(), 500, claim)
        noise = lambda t=t: (np.random.default_rng(t).random((500, 1, 32, 32)) * 255).astype(np.uint8)  # noqa: E731
        add("noise_trained", tier, t, b.train(f"s{seed}-noise-{name}", tier, noise, 2), 500, claim)
        for other in range(n_tasks):  # both directions of every pair
            if other != t:
                key = f"s{seed}-mislabelled-{b.names[other]}-as-{name}"
                m = b.train(key, tier, lambda o=other: b.local(seed, o, 600, 50 + t), 4)
                add("mislabelled", f"{b.names[other]}->{name}/{tier}", t, m, 600, b.metrics(m, t))
        factor = (2.0, 5.0, 20.0)[t]
        add("boosted", f"x{factor:g}", t, copy_of(src.model, lambda k, v, f=factor: v * f), 1200, claim)
        g = torch.Generator().manual_seed(t)
        shuffled = copy_of(
            src.model,
            lambda k, v: v.flatten()[torch.randperm(v.numel(), generator=g)].view_as(v) if v.is_floating_point() else v,
        )
        add("stolen_spec", src.model.spec.tier, t, shuffled, 1200, claim)
        for sigma in (0.01, 0.05, 0.1):
            add("noisy_copy", f"sigma {sigma:g}", t, noisy(src.model, sigma, t), 500, claim)
        add("permuted_copy", src.model.spec.tier, t, permuted(src.model, t), 1200, claim)
        dup = honest_of(t, "small_data")
        add("duplicate", dup.variant, t, dup.model, 250, b.metrics(dup.model, t))
        count = (10**9, len(b.ds.train) + 1, 25_000)[t]
        add("absurd_samples", f"claims {count}", t, dup.model, count, b.metrics(dup.model, t), assigned=250)
        for shape in TRIGGERS if t < 2 else ():
            m = b.train(
                f"s{seed}-backdoor-{shape}-{name}-{BACKDOOR_EPOCHS}-own-slice",
                tier,
                lambda t=t, shape=shape: stamp(
                    b.local(seed, t, 600, 80 + TRIGGERS.index(shape)), 0.3, shape, np.random.default_rng(t)
                ),
                BACKDOOR_EPOCHS,
            )
            note = {
                "samples_with_trigger": samples_with_trigger(m, shape),
                "trigger_reproduced": trigger_reproduced(m, b.common[t], shape),
            }
            add(f"backdoor_{shape}", tier, t, m, 800, b.metrics(m, t), note)
    return out


def adaptive(b: Builder, seed: int, honest: list[Upload], screen) -> list[Upload]:
    """The white-box attacker. It screens a candidate alone: every rule but the copy rule
    judges an upload by itself, and its candidates are trained from scratch (no copies)."""
    out = []
    for t, name in enumerate(b.names[:1]):
        tier = TIER_ORDER[(t + 1) % 3]
        clean = b.local(seed, t, 600, 90)
        for shape in TRIGGERS:
            tried: list[Upload] = []
            for p, epochs in [(p, e) for p in ADAPTIVE_FRACTIONS for e in (4, BACKDOOR_EPOCHS)]:
                m = b.train(
                    f"s{seed}-adaptive-{shape}-{name}-{p:g}" + (f"-{epochs}" if epochs != 4 else ""),
                    tier,
                    lambda shape=shape, p=p: stamp(clean, p, shape, np.random.default_rng(t)),
                    epochs,
                )
                for bn in (False, True):
                    cand_m = reset_batchnorm(m, clean) if bn else m
                    note = {
                        "fraction": p,
                        "epochs": epochs,
                        "bn_reset": bn,
                        "samples_with_trigger": samples_with_trigger(cand_m, shape),
                        "trigger_reproduced": trigger_reproduced(cand_m, b.common[t], shape),
                    }
                    cand = Upload(
                        "adaptive",
                        f"{shape} p={p:g} {epochs}ep{' bn' if bn else ''}",
                        t,
                        message(cand_m, name, 600, b.metrics(cand_m, t)),
                        600,
                        cand_m,
                        note,
                    )
                    note["passes_attacker_check"] = 0 in screen([cand]).accepted
                    note["took"] = note["trigger_reproduced"] > TOOK
                    tried.append(cand)
            out.append(attackers_pick(tried))
        src = next(u for u in honest if u.task == t and "/long_large_data/" in u.variant)
        for sigma in (0.0, 0.05, 0.2, 0.5):  # permuted copies, noisier = less of a copy
            m = noisy(permuted(src.model, 7), sigma, 7) if sigma else permuted(src.model, 7)
            data = message(m, name, 1200, b.metrics(m, t))
            out.append(Upload("adaptive", f"permuted copy sigma {sigma:g}", t, data, 1200, m))
    return out


def attackers_pick(tried: list[Upload]) -> Upload:
    """Of candidates ordered most poisoned first: the first that passes and whose trigger took;
    else the first that passes (harmless); else the least poisoned."""
    for wanted in (lambda n: n["passes_attacker_check"] and n["took"], lambda n: n["passes_attacker_check"]):
        found = next((u for u in tried if wanted(u.note or {})), None)
        if found is not None:
            return found
    return tried[-1]


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, c - h), 4), round(min(1.0, c + h), 4)]


def statistic(f: dict, name: str) -> float | None:
    if name in ("trigger_probe", "trigger_probe_unskilled"):  # one probe, a limit per side of the skill gate
        skilled = f.get("skilled", True)
        return f["trigger_probe"] if skilled == (name == "trigger_probe") else None
    if name == "mislabel_ratio":
        judged = f["best_other_vs_mean_image"] < Thresholds().mislabel_skill
        return f["loss_vs_mean_image"] / f["best_other_vs_mean_image"] if judged else None
    v = f.get(name)
    return None if v is None or (isinstance(v, float) and math.isinf(v)) else float(v)


def fit(features: list[dict]) -> Thresholds:
    """Thresholds from honest uploads' features. The largest of a few dozen values is only
    about their 96th percentile, and ten statistics each refusing 4 % would refuse a third of
    honest edges, so each limit is the larger of the largest value × MARGIN and the 99.9th
    percentile of a log-normal fitted to the values (the smaller and the 0.1th for the copy
    distances, where small is suspicious)."""
    values = {}
    for stat, (field, direction) in STATISTICS.items():
        xs = [v for f in features if (v := statistic(f, stat)) is not None]
        if xs:
            logs = np.log(np.maximum(xs, 1e-3))
            if direction == "max":
                limit = max(max(xs) * MARGIN, float(np.exp(logs.mean() + TAIL_Z * logs.std())))
            else:
                limit = min(min(xs) / MARGIN, float(np.exp(logs.mean() - TAIL_Z * logs.std())))
            prior = getattr(PRIOR, field)
            values[field] = round(max(limit, prior) if direction == "max" else min(limit, prior), 4)
            CALIBRATED[stat] = {"n": len(xs), "min": round(min(xs), 4), "max": round(max(xs), 4)}
    return dataclasses.replace(PRIOR, **values)


# the hand-set limits screening had before any fit; a fit never makes a limit stricter than
# these, because a few dozen small benchmark learners (mostly undertrained) do not show the
# spread of well-trained honest learners (a first fit without this floor refused 4 of 24
# held-out honest uploads, all the longest-trained, and 4 of 6 real uploads)
PRIOR = Thresholds(
    loss_cap=8.0,
    norm_cap=6.0,
    stats_error=0.2,
    claim_factor=1.5,
    mislabel_ratio=1.15,
    stats_affinity=1.0,
    copy_distance=0.3,
    functional_copy=0.2,
    trigger_rate=0.15,
    trigger_probe=0.2,
    trigger_probe_unskilled=0.2,
)
CALIBRATED: dict[str, dict] = {}  # what fit() saw of each statistic


def suspicion(f: dict | None, th: Thresholds) -> float:
    """The largest statistic ÷ its threshold (threshold ÷ statistic for copy distances)."""
    if f is None:
        return math.inf
    best = 0.0
    for stat, (field, direction) in STATISTICS.items():
        v, lim = statistic(f, stat), getattr(th, field)
        if v is None:
            continue
        best = max(best, v / lim if direction == "max" else lim / max(v, 1e-9))
    return best


def auc(neg: list[float], pos: list[float]) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / max(len(pos) * len(neg), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-task", type=int, default=200, help="cloud common images per task")
    ap.add_argument("--cache", type=Path, default=None, help="keep trained models here (reruns skip training)")
    ap.add_argument("--fit", action="store_true", help="print the fitted Thresholds as Python")
    ap.add_argument("--field", type=Path, nargs="*", default=[], help="run folders whose uploads to screen too")
    args = ap.parse_args()
    torch.set_num_threads(1)
    b = Builder(args.per_task, args.cache)
    timing = {"seconds": 0.0, "uploads": 0}

    def screen(ups: list[Upload], th: Thresholds | None = None):
        started = time.perf_counter()
        res = screen_uploads(
            {e: u.data for e, u in enumerate(ups)},
            b.names,
            b.common,
            32,
            1,
            assigned={e: u.assigned for e, u in enumerate(ups)},
            max_samples=len(b.ds.train),
            thresholds=th or thresholds,
        )
        timing["seconds"] += time.perf_counter() - started
        timing["uploads"] += len(ups)
        return res

    # 1. calibration: honest uploads of the calibration seeds, screened per seed
    thresholds = Thresholds()
    cal_features = []
    for seed in CALIBRATION:
        ups = honest_population(b, seed)
        res = screen(ups)
        cal_features += [res.features[e] for e in range(len(ups)) if e in res.features]
    thresholds = fit(cal_features)
    print("fitted:", thresholds, file=sys.stderr)
    if args.fit:
        print(repr(thresholds), file=sys.stderr)

    # 2. held-out seeds: honest alone, then honest + every attack (attacks from the first)
    honest_refused, honest_seen, held_features = [], 0, []
    attack_ups: list[Upload] = []
    ablation_honest = {r: 0 for r in RULES}
    ablation_mal = {r: 0 for r in RULES}
    scores_honest, scores_mal = [], []
    per_attack: dict[str, dict] = {}
    ineffective: list[dict] = []
    caught_all = 0

    def refused_without(res, e: int, rule: str | None) -> bool:
        if any(r["edge"] == e for r in res.rejected):
            return True
        fails = res.features[e]["fails"]
        return any(r != rule for r in fails)

    held_honest: list[Upload] = []
    for i, seed in enumerate(HELD_OUT):
        honest = honest_population(b, seed)
        held_honest += honest
        group = attacks(b, seed, honest) if i == 0 else []
        attack_ups += group
        res = screen(honest + group)
        for e, u in enumerate(honest):
            honest_seen += 1
            held_features.append(res.features.get(e))
            scores_honest.append(suspicion(res.features.get(e), thresholds))
            if refused_without(res, e, None):
                honest_refused.append({"upload": u.variant, "task": b.names[u.task], "why": res.features[e]["fails"]})
            for r in RULES:
                ablation_honest[r] += refused_without(res, e, r)
        for k, u in enumerate(group):
            e = len(honest) + k
            hit = refused_without(res, e, None)
            reason = next((r["reason"] for r in res.rejected + res.quarantined if r["edge"] == e), None)
            took = (u.note or {}).get("trigger_reproduced", 1.0) > TOOK
            caught_all += hit
            if took:  # rates and each rule's contribution: over the attacks that do something
                scores_mal.append(suspicion(res.features.get(e), thresholds))
                for r in RULES:
                    ablation_mal[r] += refused_without(res, e, r)
            else:
                ineffective.append({"attack": u.kind, "task": b.names[u.task], "caught": hit, "note": u.note})
                print(f"  {u.kind:18} {b.names[u.task]:14} did not take: {u.note}", file=sys.stderr)
                continue
            d = per_attack.setdefault(u.kind, {"caught": 0, "total": 0, "missed": []})
            d["caught"] += hit
            d["total"] += 1
            if not hit:
                d["missed"].append(f"{b.names[u.task]} {u.variant}")
            print(
                f"  {u.kind:18} {b.names[u.task]:14} {u.variant:30} {'CAUGHT' if hit else 'missed'}: "
                f"{reason} {u.note or ''}",
                file=sys.stderr,
            )
    n_all = len(attack_ups)
    n_mal = sum(d["total"] for d in per_attack.values())
    caught = sum(d["caught"] for d in per_attack.values())
    honest_took = max(trigger_reproduced(u.model, b.common[u.task], shape) for u in held_honest for shape in TRIGGERS)

    # 3. the adaptive attacker, against the fitted thresholds, on held-out seed data
    honest0 = honest_population(b, HELD_OUT[0])
    adapt = adaptive(b, HELD_OUT[0], honest0, screen)
    honest_losses = {
        t: float(np.median([reconstruction_metrics(u.model, b.common[t])["test_loss"] for u in honest0 if u.task == t]))
        for t in range(len(b.names))
    }
    honest_trigger = {
        (t, s): float(np.median([samples_with_trigger(u.model, s) for u in honest0 if u.task == t]))
        for t in range(1)
        for s in TRIGGERS
    }
    timing.update(seconds=0.0, uploads=0)
    adaptive_rows = []
    for u in adapt:  # each alone beside the honest uploads: the attacker's uploads are not copies of each other
        res = screen(honest0 + [u])
        e = len(honest0)
        hit = refused_without(res, e, None)
        scores_mal.append(suspicion(res.features.get(e), thresholds))
        shape = u.variant.split()[0]
        row = {
            "task": b.names[u.task],
            "attack": u.variant,
            "caught": hit,
            "fails": res.features[e]["fails"] if e in res.features else ["rejected"],
            "loss_vs_honest_median": round(
                reconstruction_metrics(u.model, b.common[u.task])["test_loss"] / honest_losses[u.task], 3
            ),
        }
        if shape in TRIGGERS:
            row["samples_with_trigger"] = (u.note or {}).get("samples_with_trigger")
            row["honest_samples_with_trigger"] = honest_trigger[(u.task, shape)]
            row["trigger_reproduced"] = round((u.note or {}).get("trigger_reproduced", 0.0), 4)
            row["took"] = row["trigger_reproduced"] > TOOK
        adaptive_rows.append(row)
        print(f"  adaptive {row}", file=sys.stderr)
    adaptive_caught = sum(bool(r["caught"]) for r in adaptive_rows)
    adaptive_effective_undetected = sum(not r["caught"] and r.get("took", True) for r in adaptive_rows)

    field = []
    for run in args.field:
        field += screen_field(run, thresholds)

    refused = len(honest_refused)
    distinct = len({weights_sha256(weights_bytes(u.model)) for u in held_honest})
    result = {
        "tpr": round(caught / n_mal, 4),
        "tpr_ci95": wilson(caught, n_mal),
        "tpr_all": round(caught_all / n_all, 4),
        "attacks_all": n_all,
        "ineffective": ineffective,
        "took_threshold": TOOK,
        "honest_trigger_reproduced_max": round(honest_took, 4),
        "fpr": round(refused / honest_seen, 4),
        "fpr_ci95": wilson(refused, honest_seen),
        "adaptive_tpr": round(adaptive_caught / len(adaptive_rows), 4),
        "adaptive_caught": adaptive_caught,
        "adaptive_total": len(adaptive_rows),
        "adaptive_effective_undetected": adaptive_effective_undetected,
        "auc": round(auc(scores_honest, scores_mal), 4),
        "malicious": n_mal,
        "caught": caught,
        "honest_distinct_models_held_out": distinct,
        "honest_distinct_models_calibration": len(cal_features),
        "honest_refused": honest_refused,
        "calibration_seeds": list(CALIBRATION),
        "held_out_seeds": list(HELD_OUT),
        "thresholds": dataclasses.asdict(thresholds),
        "calibration_statistics": CALIBRATED,
        "ablation": {
            r: {"tpr": round(ablation_mal[r] / n_mal, 4), "fpr": round(ablation_honest[r] / honest_seen, 4)}
            for r in RULES
        },
        "per_attack": per_attack,
        "adaptive": adaptive_rows,
        "field": field,
        "seconds_per_upload": round(timing["seconds"] / max(timing["uploads"], 1), 4),
        "common_per_task": args.per_task,
        "models_trained": b.trained,
        "train_seconds": round(b.train_seconds, 1),
    }
    for kind, v in per_attack.items():
        print(f"{kind:18} caught {v['caught']}/{v['total']}", file=sys.stderr)
    print(json.dumps(result))


def screen_field(run: Path, th: Thresholds) -> list[dict]:
    """Honest uploads of a real run (its ``cloud/uploads``), screened with the fitted thresholds."""
    from baim.cloud import common_data
    from baim.data.layout import Layout
    from baim.runfiles import RunFiles

    files = RunFiles(run)
    layout = Layout.load(files.layout)
    ds = load_fashion_mnist(os.environ.get("BAIM_FMNIST_DIR"))
    images, tasks = common_data(layout, ds)
    common = {t: images[tasks == t] for t in range(len(layout.tasks))}
    ups = {e: f.read_bytes() for e, f in files.uploads().items()}
    res = screen_uploads(ups, layout.task_names, common, ds.image_size, ds.channels, thresholds=th)
    refused = [r["edge"] for r in res.rejected + res.quarantined]
    return [{"run": str(run), "uploads": len(ups), "refused": refused}]


if __name__ == "__main__":
    main()
