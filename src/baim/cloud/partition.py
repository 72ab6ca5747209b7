"""Phase 5: cut the BAIM, without loss, into one compact model per task.

``partition(baim, t)`` keeps squad t's learners, LSGate_t, their adapters, the task's latent
prior, and every learner stage and connection in the *execution closure* of squad t: the
stages of any learner (of any task) that feed squad t through a surviving connection,
transitively, and only as deep as they are read. The result is a BAIM with one squad and
no TSGate, so in eval mode it computes exactly what the BAIM computes for task t.

A compact model is saved, sent and loaded like every other model
(:mod:`baim.models.io`: manifest with format version, config and the weights' sha256).
"""

from __future__ import annotations

from ..models import BAIM, BAIMConfig, Connection


def closure(model: BAIM, task: int) -> tuple[dict[str, dict[int, int]], list[str]]:
    """Stages needed per side and learner (count from the first), and the connections in
    use, for serving ``task``."""
    squad = set(model.squad(task))
    need: dict[str, dict[int, int]] = {"enc": {}, "dec": {}}
    for side in need:
        for l in squad:
            need[side][l] = len(model.stage_modules(side, l))
    active: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, c in model.conn_keys.items():
            if name in active:
                continue
            depth = need[c.side].get(c.dst, 0)
            consumed = c.dst in squad or c.dst_stage < depth - 1
            if consumed and depth > c.dst_stage:
                active.add(name)
                if need[c.side].get(c.src, 0) < c.src_stage + 1:
                    need[c.side][c.src] = c.src_stage + 1
                changed = True
    return need, sorted(active)


def partition(model: BAIM, task: int) -> BAIM:
    need, active = closure(model, task)
    squad = model.squad(task)
    keep = sorted(set(squad) | set(need["enc"]) | set(need["dec"]))
    index = {old: new for new, old in enumerate(keep)}
    conns = [
        Connection(c.side, index[c.src], c.src_stage, index[c.dst], c.dst_stage)
        for c in (model.conn_keys[n] for n in active)
    ]
    trimmed: dict[int, dict[str, int]] = {}
    for old in keep:
        if old in model.trimmed:  # already trimmed in the BAIM (learner-level pruning)
            trimmed[index[old]] = dict(model.trimmed[old])
        if old not in squad:  # a feeder: only the stages read, no heads
            trimmed[index[old]] = {side: need[side].get(old, 0) for side in ("enc", "dec")}
    config = BAIMConfig(
        [model.task_names[task]],
        [0 if old in squad else None for old in keep],
        [model.learner(old).spec for old in keep],
        conns,
        top_k=model.top_k,
        height=model.height,
        gate_hidden=model.gate_hidden,
        latent_dim=model.latent_dim,
        has_tsgate=False,
        frozen=[index[old] for old in model.frozen_learners if old in index],
        trimmed=trimmed,
        projection_rank=model.projection_rank,
        prior_rank=model.config.prior_rank,
    )
    compact = BAIM(config)
    # Copy the weights that survive the cut: the BAIM's state, renamed to the compact model's indices.
    rename = {f"learners.{old}.": f"learners.{index[old]}." for old in keep}
    rename |= {f"adapters.{old}.": f"adapters.{index[old]}." for old in keep}
    rename |= {f"lsgates.{task}.": "lsgates.0.", f"priors.{task}.": "priors.0."}
    rename |= {f"connections.{name}.": f"connections.{c.name}." for name, c in zip(active, conns)}
    rename |= {
        f"projection_ups.{model.conn_keys[n].target}.": f"projection_ups.{c.target}." for n, c in zip(active, conns)
    }
    rename |= {
        f"projection_downs.{model.conn_keys[n].source}.": f"projection_downs.{c.source}." for n, c in zip(active, conns)
    }
    target = compact.state_dict()
    state = {}
    for key, value in model.state_dict().items():
        for old_prefix, new_prefix in rename.items():
            if key.startswith(old_prefix):
                new_key = new_prefix + key[len(old_prefix) :]
                if new_key in target:
                    state[new_key] = value.clone()
                break
    compact.load_state_dict(state)  # strict: every tensor of the compact model must come from the BAIM
    return compact.eval()
