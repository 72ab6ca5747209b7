"""Poisoning and screening, measured: how many malicious uploads does screening catch, and how
many honest ones does it refuse?

    python benchmarks/screening.py [--per-task 200] [--seed 0] [--cache DIR]

A population of uploads on real Fashion-MNIST (the three default tasks, 32×32):

- honest: every tier, short and long training (1–8 epochs), small and large local data
  (250–1200 images, a Dirichlet(0.5) class mix within the task), including undertrained ones
  (2 epochs on 500 images, 1 epoch on 300);
- malicious, each aimed at every task once (the attacker's tier rotates with the task):
  ``random`` (freshly initialised weights), ``noise_trained`` (trained on uniform noise),
  ``mislabelled`` (trained on another task's data, labelled as this task), ``boosted``
  (an honest model's weights × 2, 5, 20), ``backdoor`` (a 5×5 trigger patch on 30 % of the
  training images; the benchmark reports how often its samples reproduce it),
  ``stolen_spec`` (an honest edge's header, spec and metrics with that model's weights
  shuffled inside each tensor), ``noisy_copy`` (an honest upload plus Gaussian noise of 1–10 %
  of each tensor's spread), ``duplicate`` (an honest upload byte for byte under another edge),
  ``absurd_samples`` (a real model claiming 10^9 samples, more than the training split, or
  50× what the layout gave the edge), and ``adaptive``: an attacker that mixes honest and
  poisoned data (a backdoor trigger on a fraction p of its images, or another task's images
  at fraction p), screens its candidates with the real screening rule against the real honest
  uploads (white-box), and uploads the most poisoned one that passes (or, if none passes, the
  least poisoned).

Screening runs once per attack on the honest uploads plus that attack's uploads (attackers are
a minority, as screening's robust statistics assume), and once on the honest uploads alone.
TPR = malicious uploads refused (rejected or quarantined) / malicious uploads; FPR = honest
refusals / honest screenings, over all rounds. The last line printed is one JSON object with
``tpr``, ``fpr``, ``per_attack``, ``honest`` (per honest configuration) and the screening time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("BAIM_QUIET", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from baim.cloud.screening import screen_uploads  # noqa: E402
from baim.config import Recipe  # noqa: E402
from baim.data import load_fashion_mnist  # noqa: E402
from baim.edge import train_learner  # noqa: E402
from baim.learners import StagedVAE, tier_spec  # noqa: E402
from baim.models import reconstruction_metrics  # noqa: E402
from baim.transport import Message, encode  # noqa: E402

TIER_ORDER = ("small", "medium", "large")
# (name, tier offset, epochs, local images): every tier meets short and long training and
# small and large local data across the three tasks
HONEST = (
    ("undertrained", 0, 2, 500),
    ("long_large_data", 1, 8, 1200),
    ("small_data", 2, 4, 250),
    ("one_epoch", 1, 1, 300),
)
TRIGGER = (slice(2, 7), slice(2, 7))  # rows, columns of the backdoor patch (top-left of the garment area)
ADAPTIVE_BACKDOOR = (0.3, 0.15, 0.08, 0.04)  # trigger fractions, most poisoned first
ADAPTIVE_MIX = (0.6, 0.4, 0.25, 0.15)  # fractions of another task's images


@dataclass
class Upload:
    kind: str  # "honest" or the attack's name
    variant: str
    task: int
    data: bytes
    assigned: int  # the sample count the (simulated) layout gave this edge
    note: dict | None = None


def message(model: StagedVAE, edge: int, task: str, samples: int, metrics: dict | None = None) -> bytes:
    meta = {"edge": edge, "task": task, "samples": samples, "spec": model.spec.to_dict(), "metrics": metrics or {}}
    return encode(Message("upload", meta, dict(model.state_dict())))


class Builder:
    """Trains (or reads back from ``cache``) every model of the population."""

    def __init__(self, per_task: int, seed: int, cache: Path | None):
        self.ds = load_fashion_mnist(os.environ.get("BAIM_FMNIST_DIR"))
        self.tasks = self.ds.tasks
        self.names = [t.name for t in self.tasks]
        self.rng = np.random.default_rng(seed)
        self.seed, self.cache = seed, cache
        labels = np.asarray(self.ds.train.labels)
        self.pool: list[np.ndarray] = []
        self.common: dict[int, np.ndarray] = {}
        for t, task in enumerate(self.tasks):
            idx = self.rng.permutation(np.flatnonzero(np.isin(labels, task.classes)))
            self.common[t] = self.ds.train.load(np.sort(idx[:per_task]))
            self.pool.append(idx[per_task:])
        self.labels = labels
        self.trained = 0
        self.train_seconds = 0.0

    def local(self, t: int, n: int, key: int) -> np.ndarray:
        """A non-IID slice of task t: Dirichlet(0.5) class proportions, n images."""
        rng = np.random.default_rng(self.seed * 1000 + key)
        classes = list(self.tasks[t].classes)
        p = rng.dirichlet([0.5] * len(classes))
        counts = rng.multinomial(n, p)
        out = []
        for c, k in zip(classes, counts):
            idx = self.pool[t][self.labels[self.pool[t]] == c]
            out.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
        return self.ds.train.load(np.sort(np.concatenate(out)))

    def train(self, key: str, tier: str, images_fn, epochs: int) -> StagedVAE:
        seed = int(hashlib.sha256(f"{self.seed}/{key}".encode()).hexdigest()[:6], 16)
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
        """What an honest edge reports: its test loss (here on held-out images of its task)."""
        test = self.ds.train.load(self.pool[t][-300:])
        return {"test_loss": reconstruction_metrics(model, test)["test_loss"]}


def stamp(images: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    out = images.copy()
    hit = rng.random(len(out)) < fraction
    out[hit, :, TRIGGER[0], TRIGGER[1]] = 255
    return out


def trigger_rate(model: StagedVAE, common: np.ndarray, n: int = 200) -> float:
    """How often the model's N(0, I) samples show the trigger: patch mean over 0.5 where the
    task's real images are dark there."""
    with torch.no_grad():
        s = model.sample(n, torch.Generator().manual_seed(0))
    return float((s[:, :, TRIGGER[0], TRIGGER[1]].mean((1, 2, 3)) > 0.5).float().mean())


def honest_population(b: Builder) -> tuple[list[Upload], dict[int, StagedVAE]]:
    ups, models = [], {}
    for t, name in enumerate(b.names):
        for k, (variant, off, epochs, n) in enumerate(HONEST):
            tier = TIER_ORDER[(t + off) % 3]
            m = b.train(f"honest-{name}-{variant}", tier, lambda t=t, n=n, k=k: b.local(t, n, 10 * t + k), epochs)
            edge = len(ups)
            models[edge] = m
            ups.append(Upload("honest", f"{variant}/{tier}", t, message(m, edge, name, n, b.metrics(m, t)), n))
    return ups, models


def attacks(b: Builder, honest: list[Upload], models: dict[int, StagedVAE]) -> dict[str, list[Upload]]:
    """Every attack's uploads (edge ids after the honest ones: the cloud receives them later)."""
    out: dict[str, list[Upload]] = {}
    n_tasks = len(b.names)

    def honest_of(t: int, variant: str) -> int:
        return next(e for e, u in enumerate(honest) if u.task == t and u.variant.startswith(variant))

    def claim(t: int) -> dict:
        """A plausible lie: the median test loss the honest edges of task t report."""
        losses = [json_meta(u.data)["metrics"]["test_loss"] for u in honest if u.task == t]
        return {"test_loss": float(np.median(losses))}

    def add(kind: str, variant: str, t: int, model: StagedVAE, samples: int, metrics, note=None, assigned=None):
        lst = out.setdefault(kind, [])
        edge = len(honest) + len(lst)
        data = message(model, edge, b.names[t], samples, metrics)
        lst.append(Upload(kind, variant, t, data, samples if assigned is None else assigned, note))

    for t, name in enumerate(b.names):
        tier = TIER_ORDER[t]
        # random weights: a fresh learner as PyTorch initialises it
        torch.manual_seed(b.seed + 100 + t)
        add("random", tier, t, StagedVAE(tier_spec(tier)), 500, claim(t))
        # trained on noise
        m = b.train(
            f"noise-{name}",
            tier,
            lambda t=t: (np.random.default_rng(t).random((500, 1, 32, 32)) * 255).astype(np.uint8),
            2,
        )
        add("noise_trained", tier, t, m, 500, claim(t))
        # trained on the next task's data, labelled as this one; it reports its true loss on
        # this task, so that only its content gives it away
        other = (t + 1) % n_tasks
        m = b.train(f"mislabelled-{name}", tier, lambda o=other: b.local(o, 600, 500 + o), 4)
        add("mislabelled", f"{b.names[other]}->{name}/{tier}", t, m, 600, b.metrics(m, t))
        # boosted weights of an honest upload
        src = honest_of(t, "long_large_data")
        factor = (2.0, 5.0, 20.0)[t]
        m = StagedVAE(models[src].spec)
        m.load_state_dict(models[src].state_dict())
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(factor)
        add("boosted", f"x{factor:g}", t, m.eval(), 1200, json_meta(honest[src].data)["metrics"])
        # backdoor: a trigger patch on 30 % of the training images, which its samples reproduce
        m = b.train(
            f"backdoor-{name}",
            tier,
            lambda t=t: stamp(b.local(t, 800, 600 + t), 0.3, np.random.default_rng(t)),
            6,
        )
        add("backdoor", tier, t, m, 800, b.metrics(m, t), {"trigger_rate": trigger_rate(m, b.common[t])})
        # stolen spec: an honest edge's header with that model's weights shuffled in each tensor
        src = honest_of(t, "long_large_data")
        m = StagedVAE(models[src].spec)
        g = torch.Generator().manual_seed(t)
        state = {
            k: (v.flatten()[torch.randperm(v.numel(), generator=g)].view_as(v) if v.is_floating_point() else v)
            for k, v in models[src].state_dict().items()
        }
        m.load_state_dict(state)
        stolen = json_meta(honest[src].data)
        add("stolen_spec", models[src].spec.tier, t, m.eval(), stolen["samples"], stolen["metrics"])
        # a noisy copy of an honest upload
        src = honest_of(t, ("long_large_data", "undertrained", "small_data")[t])
        sigma = (0.01, 0.05, 0.1)[t]
        m = StagedVAE(models[src].spec)
        state = {}
        for k, v in models[src].state_dict().items():
            if v.is_floating_point() and v.numel() > 1:
                v = v + sigma * v.std() * torch.randn(v.shape, generator=g)
            state[k] = v
        m.load_state_dict(state)
        add("noisy_copy", f"sigma {sigma:g} of edge {src}", t, m.eval(), 500, json_meta(honest[src].data)["metrics"])
        # an exact duplicate of an honest upload under another edge id
        src = honest_of(t, ("small_data", "one_epoch", "long_large_data")[t])
        add("duplicate", f"of edge {src}", t, models[src], 250, json_meta(honest[src].data)["metrics"])
        # a real model claiming an absurd sample count
        m = b.train(f"absurd-{name}", tier, lambda t=t: b.local(t, 500, 700 + t), 3)
        count = (10**9, len(b.ds.train) + 1, 25_000)[t]
        add("absurd_samples", f"claims {count}", t, m, count, b.metrics(m, t), assigned=500)
    return out


def adaptive(b: Builder, honest: list[Upload], screen) -> list[Upload]:
    """The white-box attacker: for each (task, poison) it trains a ladder of mixes, screens each
    candidate with the real rule against the real honest uploads, and keeps the most poisoned
    candidate that passes (or the least poisoned, if none does)."""
    out = []
    for t, name in enumerate(b.names[:2]):
        tier = TIER_ORDER[(t + 1) % 3]
        for poison, ladder in (("backdoor", ADAPTIVE_BACKDOOR), ("mix", ADAPTIVE_MIX)):
            chosen = None
            for p in ladder:
                if poison == "backdoor":
                    fn = lambda t=t, p=p: stamp(b.local(t, 800, 800 + t), p, np.random.default_rng(t))  # noqa: E731
                else:
                    other = (t + 1) % len(b.names)

                    def fn(t=t, p=p, other=other) -> np.ndarray:
                        n_other = int(round(800 * p))
                        return np.concatenate([b.local(t, 800 - n_other, 800 + t), b.local(other, n_other, 900 + t)])

                m = b.train(f"adaptive-{poison}-{name}-{p:g}", tier, fn, 6)
                edge = len(honest)
                data = message(m, edge, name, 800, b.metrics(m, t))
                note = {"poison": poison, "fraction": p}
                if poison == "backdoor":
                    note["trigger_rate"] = trigger_rate(m, b.common[t])
                cand = Upload("adaptive", f"{poison} p={p:g}", t, data, 800, note)
                res = screen(honest + [cand])
                passes = edge in res.accepted
                note["passes_attacker_check"] = passes
                chosen = cand
                if passes:
                    break
            assert chosen is not None
            out.append(chosen)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-task", type=int, default=200, help="cloud common images per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="keep trained models here (reruns skip training)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    b = Builder(args.per_task, args.seed, args.cache)
    timing = {"seconds": 0.0, "uploads": 0}

    def screen(ups: list[Upload]):
        """One screening, uploads in the order received; edge ids are positions."""
        started = time.perf_counter()
        res = screen_uploads(
            {e: u.data for e, u in enumerate(ups)},
            b.names,
            b.common,
            32,
            1,
            assigned={e: u.assigned for e, u in enumerate(ups)},
            max_samples=len(b.ds.train),
        )
        timing["seconds"] += time.perf_counter() - started
        timing["uploads"] += len(ups)
        return res

    honest, models = honest_population(b)
    by_attack = attacks(b, honest, models)
    by_attack["adaptive"] = adaptive(b, honest, screen)
    timing.update(seconds=0.0, uploads=0)  # the attacker's own screenings are not the cloud's cost

    per_attack: dict[str, dict] = {}
    honest_refused: dict[str, int] = {}
    honest_seen = 0
    rounds: list[tuple[str, list[list[Upload]]]] = [("none", [[]])]
    for name, ups in by_attack.items():
        # the adaptive attacker screened itself alone against the honest uploads: so it is screened
        rounds.append((name, [[u] for u in ups] if name == "adaptive" else [ups]))
    for name, groups in rounds:
        details = []
        for group in groups:
            res = screen(honest + group)
            why = {r["edge"]: r["reason"] for r in res.rejected + res.quarantined}
            for e, u in enumerate(honest):
                honest_seen += 1
                if e in why:
                    key = f"{u.variant} ({b.names[u.task]})"
                    honest_refused[key] = honest_refused.get(key, 0) + 1
                    print(f"  honest refused in round {name}: edge {e} {u.variant}: {why[e]}", file=sys.stderr)
            for k, u in enumerate(group):
                e = len(honest) + k
                details.append(
                    {"task": b.names[u.task], "variant": u.variant, "caught": e in why, "reason": why.get(e)}
                    | (u.note or {})
                    | {"features": res.features.get(e)}
                )
        if name != "none":
            n = len(details)
            caught = sum(d["caught"] for d in details)
            per_attack[name] = {"caught": caught, "total": n, "tpr": round(caught / n, 4), "uploads": details}
    total = sum(v["total"] for v in per_attack.values())
    caught = sum(v["caught"] for v in per_attack.values())
    refused = sum(honest_refused.values())
    for k, v in per_attack.items():
        print(f"{k:16} caught {v['caught']}/{v['total']}", file=sys.stderr)
        for d in v["uploads"]:
            print(
                f"    {d['task']:14} {d['variant']:32} {'CAUGHT' if d['caught'] else 'missed'}: {d['reason']}",
                file=sys.stderr,
            )
    result = {
        "tpr": round(caught / total, 4),
        "fpr": round(refused / honest_seen, 4),
        "malicious": total,
        "caught": caught,
        "honest_uploads": len(honest),
        "honest_screenings": honest_seen,
        "honest_refused": refused,
        "honest_refused_by_config": honest_refused,
        "per_attack": {k: {kk: v[kk] for kk in ("caught", "total", "tpr")} for k, v in per_attack.items()},
        "details": {k: v["uploads"] for k, v in per_attack.items()},
        "seconds_per_upload": round(timing["seconds"] / max(timing["uploads"], 1), 4),
        "common_per_task": args.per_task,
        "models_trained": b.trained,
        "train_seconds": round(b.train_seconds, 1),
    }
    print(json.dumps(result))


def json_meta(data: bytes) -> dict:
    n = int.from_bytes(data[5:9], "big")
    return json.loads(data[9 : 9 + n])["meta"]


if __name__ == "__main__":
    main()
