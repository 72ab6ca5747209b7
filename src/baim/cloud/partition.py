"""Phase 5: cut the BAIM, without loss, into one compact model per task (DESIGN.md §4).

``partition(baim, t)`` keeps squad t's learners, LSGate_t, their adapters, the task's latent
prior, and every learner stage and connection in the *execution closure* of squad t: the
stages of any learner (of any task) that feed squad t through a surviving connection,
transitively, and only as deep as they are read. The result is a BAIM with one squad and
no TSGate, so in eval mode it computes exactly what the BAIM computes for task t.

A compact model is saved as ``manifest.json`` (format version, task, learner specs and
roles, trims, connections, gate config, D, sha256 of the weights) + ``weights.safetensors``
and validated on load.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path


from ..atomic import write_text
from ..learners import LearnerFileError
from ..learners.io import load_weights, plain_state, save_weights
from .connections import Connection
from .io import baim_config, restore
from .model import BAIM

MANIFEST_VERSION = 1
MANIFEST, WEIGHTS = "manifest.json", "weights.safetensors"


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
    learners = [copy.deepcopy(model.learners[l]) for l in keep]
    conns = [Connection(c.side, index[c.src], c.src_stage, index[c.dst], c.dst_stage)
             for c in (model.conn_keys[n] for n in active)]
    compact = BAIM(learners, [0 if l in squad else None for l in keep], [model.task_names[task]], [],
                   top_k=model.top_k, height=model.height, gate_hidden=model.gate_hidden,
                   latent_dim=model.latent_dim)
    compact.tsgate = None
    for new, old in enumerate(keep):
        compact.adapters[new] = copy.deepcopy(model.adapters[old])
        if old in model.trimmed:  # already trimmed in the BAIM (learner-level pruning)
            compact.trimmed[new] = dict(model.trimmed[old])
    compact.lsgates[0] = copy.deepcopy(model.lsgates[task])
    compact.priors[0] = copy.deepcopy(model.priors[task])
    for c, name in zip(conns, active):
        compact.connections[c.name] = copy.deepcopy(model.connections[name])
        compact.conn_keys[c.name] = c
    for old in keep:
        if old not in squad:  # a feeder: only the stages read, no heads
            for side in ("enc", "dec"):
                compact.trim(index[old], side, need[side].get(old, 0))
    compact.frozen_learners = {index[l] for l in model.frozen_learners if l in index}
    return compact.eval()


def manifest_and_weights(model: BAIM) -> tuple[dict, dict]:
    """What a deployment message carries (the same content as the two files)."""
    return {"format_version": MANIFEST_VERSION, "kind": "compact", "task": model.task_names[0],
            "baim": baim_config(model)}, plain_state(model)


def save_compact(model: BAIM, folder: str | Path) -> Path:
    folder = Path(folder)
    save_weights(model, folder / WEIGHTS)
    manifest, _ = manifest_and_weights(model)
    manifest["weights_sha256"] = hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()
    write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return folder


def load_compact(folder: str | Path) -> BAIM:
    folder = Path(folder)
    mpath, wpath = folder / MANIFEST, folder / WEIGHTS
    if not mpath.is_file() or not wpath.is_file():
        raise LearnerFileError(f"{folder}: a compact model needs {MANIFEST} and {WEIGHTS}")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise LearnerFileError(f"{mpath}: not valid JSON: {exc}") from exc
    if manifest.get("format_version") != MANIFEST_VERSION or manifest.get("kind") != "compact":
        raise LearnerFileError(f"{mpath}: not a compact model manifest of format {MANIFEST_VERSION} "
                               f"(found {manifest.get('kind')!r} v{manifest.get('format_version')!r})")
    digest = hashlib.sha256(wpath.read_bytes()).hexdigest()
    if digest != manifest.get("weights_sha256"):
        raise LearnerFileError(f"{wpath}: sha256 {digest[:12]}… does not match the manifest's "
                               f"{str(manifest.get('weights_sha256'))[:12]}…; the weights were altered or "
                               "belong to another model")
    return compact_from(manifest, load_weights(wpath))


def compact_from(manifest: dict, state: dict) -> BAIM:
    """Rebuild a compact model from its manifest and weights, validating both."""
    cfg = manifest.get("baim")
    if not isinstance(cfg, dict) or len(cfg.get("task_names", [])) != 1:
        raise LearnerFileError("compact manifest must describe exactly one task")
    return restore(cfg, state, "compact model weights")
