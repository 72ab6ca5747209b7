"""BAIM checkpoints: ``baim.json`` (structure) + ``weights.safetensors``. No pickle.

The JSON holds everything needed to rebuild the module before loading the weights: the
learners' specs and tasks, surviving connections, gate settings, frozen and trimmed
learners. Loading checks tensor names, shapes and finiteness before use.
"""

from __future__ import annotations

import json
from pathlib import Path


from ..atomic import write_text
from ..learners import LearnerFileError, LearnerSpec, SpecError, StagedVAE
from ..learners.io import check_state, load_weights, save_weights
from .connections import Connection
from .model import BAIM

FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "baim.json", "weights.safetensors"


def baim_config(model: BAIM) -> dict:
    return {
        "format": FORMAT_VERSION,
        "task_names": model.task_names,
        "learner_tasks": model.learner_tasks,
        "learner_specs": [l.spec.to_dict() for l in model.learners],
        "connections": [c.to_dict() for c in model.conn_keys.values()],
        "top_k": model.top_k,
        "height": model.height,
        "gate_hidden": model.gate_hidden,
        "latent_dim": model.latent_dim,
        "frozen": sorted(model.frozen_learners),
        "trimmed": {str(k): v for k, v in sorted(model.trimmed.items())},
        "has_tsgate": model.tsgate is not None,
    }


def build_from_config(cfg: dict) -> BAIM:
    if cfg.get("format") != FORMAT_VERSION:
        raise LearnerFileError(f"BAIM format {cfg.get('format')!r}; this baim reads {FORMAT_VERSION}")
    try:
        specs = [LearnerSpec.from_dict(s) for s in cfg["learner_specs"]]
        model = BAIM([StagedVAE(s) for s in specs], cfg["learner_tasks"], cfg["task_names"],
                     [Connection(**c) for c in cfg["connections"]], top_k=cfg["top_k"],
                     height=cfg["height"], gate_hidden=cfg["gate_hidden"], latent_dim=cfg["latent_dim"])
    except (KeyError, TypeError, IndexError, ValueError, SpecError) as exc:
        raise LearnerFileError(f"BAIM config is malformed: {exc}") from exc
    for l, sides in cfg.get("trimmed", {}).items():
        for side, keep in sides.items():
            model.trim(int(l), side, keep)
    if not cfg.get("has_tsgate", True):
        model.tsgate = None
    from .fusion import freeze_learners
    freeze_learners(model, cfg.get("frozen", []))
    return model


def save_baim(model: BAIM, folder: str | Path, extra: dict[str, str] | None = None) -> Path:
    folder = Path(folder)
    save_weights(model, folder / WEIGHTS_FILE)
    for name, text in (extra or {}).items():
        write_text(folder / name, text)
    write_text(folder / CONFIG_FILE, json.dumps(baim_config(model), indent=2) + "\n")
    return folder


def load_baim(folder: str | Path) -> BAIM:
    folder = Path(folder)
    cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise LearnerFileError(f"{folder}: a saved BAIM needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, OSError) as exc:
        raise LearnerFileError(f"{cfg_path}: unreadable BAIM config: {exc}") from exc
    return restore(cfg, load_weights(w_path), str(w_path))


def restore(cfg: dict, state: dict, source: str) -> BAIM:
    """Build a BAIM (or compact model) from its config and load weights that were checked
    against it: names, shapes and finite values."""
    model = build_from_config(cfg)
    check_state(model, state, source)
    model.load_state_dict(state)
    return model.eval()
