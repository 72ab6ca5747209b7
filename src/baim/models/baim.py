"""The bottom-up big AI model (BAIM): uploaded learners fused into a multi-task MoE.

Read top to bottom:

1. **Squads.** Learners are grouped by task; TSGate sends a sample to its task's squad (by
   task id, or by a small task classifier for bare images).
2. **Encoder side.** Every encoder of the squad runs on the squad's samples (plus the
   encoder stages of any learner that feeds them through a surviving connection). Their
   posteriors are multiplied (product of Gaussian experts) coordinate by coordinate in one
   shared latent of size D = max latent dim; learner ℓ speaks for the first d_ℓ
   coordinates; a coordinate nobody speaks for is N(0, 1).
3. **Decoder side.** The task's LSGate reads z and picks the top-K decoders; each decodes
   ``A_ℓ z`` (a learned adapter R^D → R^{d_ℓ}, initialised as truncation). The output is the
   gate-weighted sum. Only the chosen decoders run, plus the decoder stages their surviving
   connections read from (transitively, and only as deep as needed), dispatched by sample
   index sets, so decoder cost grows with K and the connections in use, not with N.

With α = 0 (fresh connections), K = 1 and a one-learner squad, the BAIM reproduces that
learner exactly.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import cast

import torch
from torch import nn

from ..learners import StagedVAE
from .baim_config import MAX_LEARNERS, BAIMConfig
from .connections import Connection, LowRankProjection, Projection
from .gates import LSGate, Routing, TaskClassifier, grow_inputs
from .prior import LatentPrior


@dataclass
class BAIMOutput:
    x_hat: torch.Tensor
    mu: torch.Tensor  # (n, D) product-of-experts posterior mean
    logvar: torch.Tensor  # (n, D)
    spoken: torch.Tensor  # (n, D) bool: coordinate has at least one expert
    z: torch.Tensor
    routings: dict[int, tuple[torch.Tensor, Routing]] = field(default_factory=dict)  # task -> (rows, routing)

    def kl(self) -> torch.Tensor:
        """Per-sample KL(q(z|x) ‖ N(0, I)) over the coordinates some expert speaks for."""
        term = -0.5 * (1 + self.logvar - self.mu.pow(2) - self.logvar.exp())
        return (term * self.spoken).sum(dim=1)


class BAIM(nn.Module):
    def __init__(self, config: BAIMConfig, learners: list[StagedVAE] | None = None):
        """Build the BAIM ``config`` describes, around ``learners`` (trained uploads) or, by
        default, freshly initialised learners of the config's specs."""
        super().__init__()
        if learners is None:
            learners = [StagedVAE(s) for s in config.learner_specs]
        if len(learners) != len(config.learner_tasks) or not learners:
            raise ValueError("a BAIM needs at least one learner and one task (or None for a feeder) per learner")
        first = learners[0].spec
        for s in (lrn.spec for lrn in learners):
            if (s.image_size, s.channels) != (first.image_size, first.channels):
                raise ValueError("all learners of a BAIM must share image size and channels")
        self.image_size, self.channels = first.image_size, first.channels
        widest = max(lrn.spec.latent_dim for lrn in learners)
        if config.latent_dim and config.latent_dim < widest:
            raise ValueError(f"shared latent {config.latent_dim} is smaller than a learner's ({widest})")
        # the config as built so far; connections, trimming and freezing are added below
        self._config = replace(
            config,
            learner_specs=[lrn.spec for lrn in learners],
            latent_dim=config.latent_dim or widest,  # a compact model keeps the BAIM's shared latent size
            connections=(),
            frozen=(),
            trimmed={},
        )
        self._conn_keys: dict[str, Connection] = {}
        self.learners = nn.ModuleList(learners)
        self.adapters = nn.ModuleList(self._truncation(lrn.spec.latent_dim) for lrn in learners)
        self.lsgates = nn.ModuleList(
            LSGate(self.latent_dim, len(self.squad(t)), self.gate_hidden) for t in range(len(self.task_names))
        )
        self.tsgate: TaskClassifier | None = (
            TaskClassifier(self.channels, self.image_size, len(self.task_names)) if config.has_tsgate else None
        )
        self.priors = nn.ModuleList(LatentPrior(self.latent_dim, config.prior_rank) for _ in self.task_names)
        self.connections = nn.ModuleDict()
        self.projection_downs = nn.ModuleDict()  # low-rank only: source stage -> its shared code (c_in → r)
        self.projection_ups = nn.ModuleDict()  # low-rank only: target stage -> its shared up-projection
        for c in config.connections:
            self.add_connection(c)
        for lrn, sides in config.trimmed.items():
            for side, keep in sides.items():
                self.trim(lrn, side, keep)
        self.freeze(config.frozen)
        self.stage_calls: Counter = Counter()  # (side, learner, stage) -> samples processed

    @classmethod
    def from_learners(
        cls,
        learners: list[StagedVAE],
        learner_tasks: list[int | None],
        task_names: list[str],
        connections: Iterable[Connection] = (),
        **kw,
    ) -> BAIM:
        """A BAIM around these learners (their specs fill the config); ``kw``: other
        :class:`BAIMConfig` fields."""
        return cls(
            BAIMConfig(list(task_names), list(learner_tasks), [lrn.spec for lrn in learners], list(connections), **kw),
            learners,
        )

    @property
    def config(self) -> BAIMConfig:
        """The config of the model as it is now (after pruning, trimming, growth)."""
        return self._config

    def _reconfigure(self, **changes: object) -> None:
        self._config = replace(self._config, **changes)  # type: ignore[arg-type]

    # read-through views of the config (copies: change the model through its methods)
    @property
    def task_names(self) -> list[str]:
        return list(self._config.task_names)

    @property
    def learner_tasks(self) -> list[int | None]:
        return list(self._config.learner_tasks)

    @property
    def top_k(self) -> int:
        return self._config.top_k

    @top_k.setter
    def top_k(self, k: int) -> None:
        """K may change after training (serving picks fewer learners)."""
        if not 1 <= k <= MAX_LEARNERS:
            raise ValueError(f"top_k must be in 1..{MAX_LEARNERS}, got {k}")
        self._reconfigure(top_k=k)

    @property
    def height(self) -> int:
        return self._config.height

    @property
    def gate_hidden(self) -> int:
        return self._config.gate_hidden

    @property
    def latent_dim(self) -> int:
        return self._config.latent_dim

    @property
    def conn_keys(self) -> Mapping[str, Connection]:
        """Surviving connections by name, in the order they were added."""
        return MappingProxyType(self._conn_keys)

    @property
    def frozen_learners(self) -> set[int]:
        return set(self._config.frozen)

    @property
    def trimmed(self) -> dict[int, dict[str, int]]:
        """Learner -> {side: stages kept}, for learners cut down by :meth:`trim`."""
        return {k: dict(v) for k, v in self._config.trimmed.items()}

    @property
    def projection_rank(self) -> int:
        """0: exact 1×1 projections; r > 0: rank r through shared codes (one per source stage)."""
        return self._config.projection_rank

    def freeze(self, learners: Iterable[int]) -> None:
        """Fix these learners' weights and their normalisation statistics (``freeze`` strategy)."""
        learners = list(learners)
        self._reconfigure(frozen={*self._config.frozen, *learners})
        for lrn in learners:
            for p in self.learner(lrn).parameters():
                p.requires_grad_(False)
            self.learner(lrn).eval()

    def unfreeze(self, learners: Iterable[int]) -> None:
        """Let these learners train again (their normalisation statistics follow the mode)."""
        learners = set(learners)
        self._reconfigure(frozen=set(self._config.frozen) - learners)
        for lrn in learners:
            for p in self.learner(lrn).parameters():
                p.requires_grad_(True)

    # -- structure ------------------------------------------------------------------------
    def _truncation(self, d: int) -> nn.Linear:
        lin = nn.Linear(self.latent_dim, d)
        with torch.no_grad():
            lin.weight.zero_()
            lin.weight[:, :d] = torch.eye(d)
            lin.bias.zero_()
        return lin

    # typed views of the module containers (nn.ModuleList items are plain Modules to a type checker)
    def learner(self, l: int) -> StagedVAE:
        return cast(StagedVAE, self.learners[l])

    def lsgate(self, task: int) -> LSGate:
        return cast(LSGate, self.lsgates[task])

    def prior(self, task: int) -> LatentPrior:
        return cast(LatentPrior, self.priors[task])

    def squad(self, task: int) -> list[int]:
        return [l for l, t in enumerate(self._config.learner_tasks) if t == task]

    def stage_modules(self, side: str, learner: int) -> nn.ModuleList:
        lrn = self.learner(learner)
        return lrn.encoder_stages if side == "enc" else lrn.decoder_stages

    def stage_shape(self, side: str, learner: int, stage: int) -> tuple[int, int]:
        lrn = self.learner(learner)
        return (lrn.encoder_shapes() if side == "enc" else lrn.decoder_shapes())[stage]

    def add_connection(self, c: Connection) -> None:
        cin, sin = self.stage_shape(c.side, c.src, c.src_stage)
        cout, sout = self.stage_shape(c.side, c.dst, c.dst_stage)
        if self.projection_rank:
            if c.source not in self.projection_downs:
                self.projection_downs[c.source] = nn.Conv2d(cin, self.projection_rank, 1)
            if c.target not in self.projection_ups:
                self.projection_ups[c.target] = nn.Conv2d(self.projection_rank, cout, 1, bias=False)
            down = cast(nn.Conv2d, self.projection_downs[c.source])
            up = cast(nn.Conv2d, self.projection_ups[c.target])
            self.connections[c.name] = LowRankProjection(down, sin, up, sout)
        else:
            self.connections[c.name] = Projection(cin, sin, cout, sout)
        self._conn_keys[c.name] = c
        self._reconfigure(connections=(*self._config.connections, c))

    def remove_connection(self, name: str) -> None:
        gone = self.conn_keys[name]
        del self.connections[name]
        del self._conn_keys[name]
        self._reconfigure(connections=tuple(self._conn_keys.values()))
        # the last connection into (out of) a stage takes its up-projection (code) along
        if gone.target in self.projection_ups and all(c.target != gone.target for c in self._conn_keys.values()):
            del self.projection_ups[gone.target]
        if gone.source in self.projection_downs and all(c.source != gone.source for c in self._conn_keys.values()):
            del self.projection_downs[gone.source]

    def structure(self) -> tuple[Connection, ...]:
        """The connections, in order: what training may change (pruning) and early stopping
        gives back with the best epoch's weights (:meth:`restore_structure`)."""
        return tuple(self._conn_keys.values())

    def restore_structure(self, connections: tuple[Connection, ...]) -> None:
        """Make ``connections`` (a :meth:`structure`) the model's connections, in that order;
        the weights of re-created ones are fresh until a state dict is loaded."""
        if connections == self.structure():
            return
        for name in list(self._conn_keys):
            self.remove_connection(name)
        for c in connections:
            self.add_connection(c)

    def prune_connections(self, ratio: float) -> list[str]:
        """Delete ``floor(ratio × surviving)`` connections with the smallest |α|·‖P‖ (global
        ranking). Deleted means gone from the module and from the parameter count."""
        if not 0 <= ratio <= 1:
            raise ValueError(f"prune ratio must be in [0, 1], got {ratio}")
        scored = sorted((cast(Projection | LowRankProjection, p).score(), name) for name, p in self.connections.items())
        victims = [name for _, name in scored[: math.floor(ratio * len(scored))]]
        for name in victims:
            self.remove_connection(name)
        return victims

    def trim(self, learner: int, side: str, keep: int) -> None:
        """Keep only the first ``keep`` stages of one side of a learner that no longer
        produces that side's output itself (a deselected learner, or a feeder in a compact
        model); its head on that side goes too, and with no stage left its latent-in map and
        adapter (decoder side)."""
        lrn = self.learner(learner)
        if side == "enc":
            lrn.encoder_stages = nn.ModuleList(list(lrn.encoder_stages)[:keep])
            lrn.posterior_head = None  # type: ignore[assignment]  # trimmed: gone from the state too
        else:
            lrn.decoder_stages = nn.ModuleList(list(lrn.decoder_stages)[:keep])
            lrn.image_head = None  # type: ignore[assignment]
            if keep == 0:
                lrn.latent_in = None  # type: ignore[assignment]
                self.adapters[learner] = nn.Identity()
        trimmed = self.trimmed
        trimmed.setdefault(learner, {})[side] = keep
        self._reconfigure(trimmed=trimmed)

    # -- growth and cuts: the only ways a BAIM's structure changes ---------------------------
    def grow_latent(self, dim: int) -> None:
        """Widen the shared latent to ``dim``: adapters and LSGates give the new coordinates
        zero weight and the priors make them N(0, 1), so outputs for a z padded with zeros are
        unchanged (a newcomer's latent is wider than the BAIM's)."""
        if dim < self.latent_dim:
            raise ValueError(f"the shared latent cannot shrink ({self.latent_dim} -> {dim})")
        self.adapters = nn.ModuleList(grow_inputs(a, dim) if isinstance(a, nn.Linear) else a for a in self.adapters)
        for t in range(len(self.lsgates)):
            self.lsgate(t).grow_latent(dim)
            self.prior(t).grow(dim)
        self._reconfigure(latent_dim=dim)

    def add_learner(self, learner: StagedVAE, task: str) -> int:
        """Join ``learner`` (the module itself, not a copy) to the squad of ``task``, opening the
        task if it is new (its LSGate, its prior, one more TSGate output). Its adapter starts as
        truncation and its squad's LSGate gets one zero-initialised output, so the other squads
        compute what they did; the shared latent grows first if the learner's is wider.
        Connections are the caller's choice (:meth:`add_connection`). Returns its index."""
        spec = learner.spec
        if (spec.image_size, spec.channels) != (self.image_size, self.channels):
            raise ValueError(f"learner image geometry {spec.image_size}/{spec.channels} does not match the BAIM's")
        if spec.latent_dim > self.latent_dim:
            self.grow_latent(spec.latent_dim)
        new_task = task not in self._config.task_names
        if new_task:
            self._reconfigure(task_names=(*self._config.task_names, task))
            self.lsgates.append(LSGate(self.latent_dim, 1, self.gate_hidden))
            self.priors.append(LatentPrior(self.latent_dim, self._config.prior_rank))
            if self.tsgate is not None:
                self.tsgate.add_task()
        t = self._config.task_names.index(task)
        self.learners.append(learner)
        self._reconfigure(
            learner_tasks=(*self._config.learner_tasks, t),
            learner_specs=(*self._config.learner_specs, spec),
        )
        self.adapters.append(self._truncation(spec.latent_dim))
        if not new_task:
            self.lsgate(t).add_learner()
        return len(self.learners) - 1

    def cut_squad(self, keep: Collection[int]) -> None:
        """A compact model's squad cut to the learners ``keep``: the LSGate loses the other
        outputs (slimmed to hidden width 1 when one selectable learner is left) and the others
        leave the squad, staying only as feeders where a connection reads them; :func:`partition`
        of the result drops what no longer runs. For budgeted compact models."""
        if len(self._config.task_names) != 1:
            raise ValueError("only a compact model (one task) has its squad cut")
        squad = self.squad(0)
        if not keep or not set(keep) <= set(squad):
            raise ValueError(f"learners to keep {sorted(keep)} must be a non-empty part of the squad {squad}")
        self.lsgates[0] = self.lsgate(0).select([p for p, l in enumerate(squad) if l in keep])
        tasks = tuple(None if l in squad and l not in keep else t for l, t in enumerate(self._config.learner_tasks))
        self._reconfigure(gate_hidden=self.lsgate(0).hidden, learner_tasks=tasks)

    def selectable(self, learner: int) -> bool:
        """Whether its squad's LSGate can still pick ``learner``."""
        t = self._task_of(learner)
        return bool(self.lsgate(t).active[self.squad(t).index(learner)])

    def deselect(self, learner: int) -> None:
        """Its squad's LSGate never picks ``learner`` again (its weights stay, e.g. as a feeder
        of connections; learner pruning then trims what no longer runs). The squad's last
        selectable learner cannot go: every task needs one."""
        t = self._task_of(learner)
        gate, pos = self.lsgate(t), self.squad(t).index(learner)
        if bool(gate.active[pos]) and int(gate.active.sum()) == 1:
            raise ValueError(f"learner {learner} is the last selectable one of task {self.task_names[t]!r}")
        gate.active[pos] = False

    def _task_of(self, learner: int) -> int:
        t = self.learner_tasks[learner] if 0 <= learner < len(self.learners) else None
        if t is None:
            raise ValueError(f"learner {learner} is in no squad of this BAIM (squads: {self.learner_tasks})")
        return t

    def train(self, mode: bool = True) -> BAIM:
        super().train(mode)
        for l in self._config.frozen:  # frozen learners keep their normalisation statistics
            self.learners[l].eval()
        return self

    # -- sparse execution ---------------------------------------------------------------
    def _execute(
        self,
        side: str,
        targets: dict[int, torch.Tensor],
        n: int,
        make_input: Callable[[int, torch.Tensor], torch.Tensor],
    ) -> dict[int, torch.Tensor]:
        """Run one side of the learners on sample index sets.

        ``targets`` maps a learner to a bool mask (n,) of the samples whose final stage
        output it must produce. Stages of other learners run only on the samples where a
        surviving connection reads them. Returns the mixed final output of each target, on
        its own rows (in increasing sample order).
        """
        conns = [(name, c) for name, c in self._conn_keys.items() if c.side == side]
        into: dict[tuple[int, int], list[tuple[str, Connection]]] = {}
        for name, c in conns:
            into.setdefault((c.dst, c.dst_stage), []).append((name, c))
        depth = {l: len(self.stage_modules(side, l)) for l in range(len(self.learners))}
        max_depth = max(depth.values())
        empty = torch.zeros(n, dtype=torch.bool)
        run: dict[tuple[int, int], torch.Tensor] = {}  # samples on which stage s of l runs
        used: dict[tuple[int, int], torch.Tensor] = {}  # samples on which g(l, s) is consumed
        for s in range(max_depth - 1, -1, -1):
            for l in range(len(self.learners)):
                if s >= depth[l]:
                    continue
                m = run.get((l, s + 1), empty)
                if s == depth[l] - 1 and l in targets:
                    m = m | targets[l]
                used[(l, s)] = m
            readers: dict[tuple[int, int], torch.Tensor] = {}
            for (b, j), lst in into.items():
                if j < s or (b, j) not in used:
                    continue
                for _, c in lst:
                    if c.src_stage == s:
                        readers[(c.src, s)] = readers.get((c.src, s), empty) | used[(b, j)]
            for l in range(len(self.learners)):
                if s < depth[l]:
                    run[(l, s)] = used[(l, s)] | readers.get((l, s), empty)

        raw: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # (mask, f rows)
        mixed: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

        def rows_of(have: torch.Tensor, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            if torch.equal(have, mask):
                return feats
            return feats[mask[have].nonzero().squeeze(1)]

        # A source feeds up to h + 1 stages of every other learner: shrink it (area averaging,
        # one halving at a time) and gather its rows once per (side, sample set), not once per
        # connection; equal sample sets are recognised by value. With low-rank projections what
        # is shrunk and gathered is the source's r-channel code, computed once.
        codes: dict[tuple[int, int], torch.Tensor] = {}

        def source(key: tuple[int, int]) -> torch.Tensor:
            if not self.projection_rank:
                return raw[key][1]
            if key not in codes:
                down = cast(nn.Conv2d, self.projection_downs[f"{side}_{key[0]}_{key[1]}"])
                codes[key] = torch.nn.functional.conv2d(raw[key][1], down.weight, down.bias)
            return codes[key]

        shrunk: dict[tuple[int, int, int], torch.Tensor] = {}
        picked: dict[tuple[int, int, int, int], torch.Tensor] = {}
        mask_ids: dict[int, int] = {}  # id(mask) -> position of an equal mask in `distinct`
        distinct: list[torch.Tensor] = []

        def shrink(key: tuple[int, int], px: int) -> torch.Tensor:
            f = source(key)
            if px >= f.shape[-1]:
                return f
            if (*key, px) not in shrunk:
                shrunk[(*key, px)] = torch.nn.functional.avg_pool2d(shrink(key, 2 * px), 2)
            return shrunk[(*key, px)]

        def source_rows(key: tuple[int, int], px: int, mask: torch.Tensor) -> torch.Tensor:
            if id(mask) not in mask_ids:
                same = next((i for i, m in enumerate(distinct) if torch.equal(m, mask)), None)
                if same is None:
                    same = len(distinct)
                    distinct.append(mask)
                mask_ids[id(mask)] = same
            f = shrink(key, px)
            pick = (*key, f.shape[-1], mask_ids[id(mask)])
            if pick not in picked:
                picked[pick] = rows_of(raw[key][0], f, mask)
            return picked[pick]

        for s in range(max_depth):
            for l in range(len(self.learners)):
                if s >= depth[l] or not run[(l, s)].any():
                    continue
                mask = run[(l, s)]
                h = make_input(l, mask.nonzero().squeeze(1)) if s == 0 else rows_of(*mixed[(l, s - 1)], mask)
                raw[(l, s)] = (mask, self.stage_modules(side, l)[s](h))
                self.stage_calls[(side, l, s)] += int(mask.sum())
            for l in range(len(self.learners)):
                if s >= depth[l] or not used[(l, s)].any():
                    continue
                mask = used[(l, s)]
                g = rows_of(*raw[(l, s)], mask)
                if (l, s) in into:
                    lst = into[(l, s)]
                    feats = [source_rows((c.src, c.src_stage), g.shape[-1], mask) for _, c in lst]
                    g = g + self._project([name for name, _ in lst], feats)
                mixed[(l, s)] = (mask, g)
        return {l: mixed[(l, depth[l] - 1)][1] for l in targets if targets[l].any()}

    def _project(self, names: list[str], feats: list[torch.Tensor]) -> torch.Tensor:
        """Sum of the named connections' projections of ``feats`` (raw features, or the sources'
        codes for low-rank projections) into one target stage, run grouped
        (:meth:`Projection.summed`, :meth:`LowRankProjection.summed`), not one by one."""
        if self.projection_rank:
            return LowRankProjection.summed([cast(LowRankProjection, self.connections[n]) for n in names], feats)
        return Projection.summed([cast(Projection, self.connections[name]) for name in names], feats)

    # -- encoder side: product of experts ---------------------------------------------------
    def posterior(self, x: torch.Tensor, tasks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, D = len(x), self.latent_dim
        targets: dict[int, torch.Tensor] = {}
        for t in tasks.unique().tolist():
            for l in self.squad(t):
                targets[l] = tasks == t
        feats = self._execute("enc", targets, n, lambda l, rows: x[rows])
        prec = x.new_zeros(n, D)
        num = x.new_zeros(n, D)
        mu_sum = x.new_zeros(n, D)
        lv_sum = x.new_zeros(n, D)
        count = x.new_zeros(n, D)
        for l, h in feats.items():
            rows = targets[l].nonzero().squeeze(1)
            mu, logvar = self.learner(l).posterior(h)
            d = mu.shape[1]
            p = torch.exp(-logvar)
            pad = lambda v: torch.nn.functional.pad(v, (0, D - d))  # noqa: E731
            prec = prec.index_add(0, rows, pad(p))
            num = num.index_add(0, rows, pad(mu * p))
            mu_sum = mu_sum.index_add(0, rows, pad(mu))
            lv_sum = lv_sum.index_add(0, rows, pad(logvar))
            count = count.index_add(0, rows, pad(torch.ones_like(mu)))
        spoken = count > 0
        safe_prec = torch.where(spoken, prec, torch.ones_like(prec))
        # one expert: pass it through untouched (exact); several: the product of Gaussians
        mu = torch.where(count == 1, mu_sum, num / safe_prec)
        logvar = torch.where(count == 1, lv_sum, -torch.log(safe_prec))
        return mu * spoken, logvar * spoken, spoken

    # -- decoder side: gated top-K decoders -------------------------------------------------
    def decode(
        self, z: torch.Tensor, tasks: torch.Tensor, noisy_gate: bool = False
    ) -> tuple[torch.Tensor, dict[int, tuple[torch.Tensor, Routing]]]:
        n = len(z)
        routings: dict[int, tuple[torch.Tensor, Routing]] = {}
        targets: dict[int, torch.Tensor] = {}
        picks: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (learner, rows, weights)
        for t in tasks.unique().tolist():
            rows = (tasks == t).nonzero().squeeze(1)
            squad = self.squad(t)
            r = self.lsgate(t)(z[rows], self.top_k, noisy_gate)
            routings[t] = (rows, r)
            for pos, l in enumerate(squad):
                sel = r.indices == pos  # (m, k)
                hit = sel.any(dim=1)
                if not hit.any():
                    continue
                mask = torch.zeros(n, dtype=torch.bool)
                mask[rows[hit]] = True
                targets[l] = targets.get(l, torch.zeros(n, dtype=torch.bool)) | mask
                w = (r.weights * sel).sum(dim=1)
                picks.append((l, rows[hit], w[hit]))
        feats = self._execute(
            "dec", targets, n, lambda l, rows: self.learner(l).latent_to_map(self.adapters[l](z[rows]))
        )
        out = z.new_zeros(n, self.channels, self.image_size, self.image_size)
        for l, rows, w in picks:
            img = self.learner(l).to_image(feats[l])  # on targets[l] rows, in sample order
            all_rows = targets[l].nonzero().squeeze(1)
            where = torch.searchsorted(all_rows, rows)
            out = out.index_add(0, rows, img[where] * w.view(-1, 1, 1, 1))
        return out, routings

    # -- whole model ------------------------------------------------------------------------
    def route(self, x: torch.Tensor, tasks: torch.Tensor | None) -> torch.Tensor:
        """TSGate: the named task, or the task classifier's choice for bare images."""
        if tasks is not None:
            return tasks
        if self.tsgate is None:  # a compact model serves exactly one task
            return torch.zeros(len(x), dtype=torch.long)
        with torch.no_grad():
            return self.tsgate(x).argmax(dim=1)

    def forward(
        self, x: torch.Tensor, tasks: torch.Tensor | None = None, noise: torch.Tensor | None = None, sample: bool = True
    ) -> BAIMOutput:
        tasks = self.route(x, tasks)
        mu, logvar, spoken = self.posterior(x, tasks)
        if sample:
            eps = torch.randn_like(mu) if noise is None else noise
            z = mu + eps * torch.exp(0.5 * logvar)
        else:
            z = mu
        x_hat, routings = self.decode(z, tasks, noisy_gate=self.training)
        return BAIMOutput(x_hat, mu, logvar, spoken, z, routings)

    @torch.no_grad()
    def generate(
        self, task: int, n: int, generator: torch.Generator | None = None, standard_prior: bool = False
    ) -> torch.Tensor:
        z = self.prior(task).sample(n, generator, standard=standard_prior)
        return self.decode(z, torch.full((n,), task, dtype=torch.long))[0]

    # -- bookkeeping ----------------------------------------------------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def as_compact(learner: StagedVAE, task: str, prior_rank: int | None = None) -> BAIM:
    """``learner`` as a one-learner compact model of ``task`` on its own latent: it computes
    exactly what the learner computes (identity adapter, a one-way gate of width 1); the
    prior is unfitted (N(0, I)) until fitted. An edge's own upload in the form every delivered
    model has, so the cloud can offer it and an edge can fall back to it."""
    return BAIM.from_learners(
        [copy.deepcopy(learner)],
        [0],
        [task],
        has_tsgate=False,
        gate_hidden=1,
        top_k=1,
        height=0,
        prior_rank=prior_rank,
    ).eval()
