"""One save/load for every model baim stores or sends: learners, BAIMs, compact models.

A saved model is a folder with ``weights.safetensors`` and ``manifest.json`` (format version,
kind, the config that rebuilds the module, the weights' sha256), the manifest written last so
that its presence marks a complete save (diffusers' ``save_pretrained``/``from_pretrained``
symmetry). Loading checks, before anything is used: the manifest's format and kind, the
weights' sha256, the config, and then every tensor's name, shape and finiteness. A deployment
message carries the same manifest and weights, and is checked the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_bytes

from ..atomic import write_bytes, write_text
from ..errors import ModelFileError, SpecError
from ..learners import LearnerSpec, StagedVAE, check_state, plain_state, read_weights, weights_bytes
from .baim import BAIM
from .baim_config import BAIMConfig

FORMAT_VERSION = 2
MANIFEST, WEIGHTS = "manifest.json", "weights.safetensors"
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KB; checked before it is read
MAX_WEIGHTS_BYTES = 8 << 30  # checked (with the manifest's own count) before the weights are read
KINDS = ("learner", "baim", "compact")
Model = StagedVAE | BAIM


def kind_of(model: Model) -> str:
    if isinstance(model, StagedVAE):
        return "learner"
    return "baim" if model.tsgate is not None else "compact"


def manifest_of(model: Model, weights: bytes) -> dict[str, Any]:
    """The manifest of ``model`` whose serialized weights are ``weights``."""
    kind = kind_of(model)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "weights_bytes": len(weights),
    }
    if isinstance(model, StagedVAE):
        manifest["config"] = model.spec.to_dict()
    else:
        manifest["config"] = model.config.to_dict()
        if kind == "compact":
            manifest["task"] = model.task_names[0]
    return manifest


def save_model(model: Model, folder: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """Write ``model`` (and any small text files beside it) into ``folder``, manifest last.

    A manifest left by an earlier save is removed first: until the new one is written the
    folder is an unfinished save (``is_saved`` is false), never an old manifest beside new
    weights or files, whatever moment a kill comes at."""
    folder = Path(folder)
    weights = weights_bytes(model)
    (folder / MANIFEST).unlink(missing_ok=True)
    write_bytes(folder / WEIGHTS, weights)
    for name, text in (extra_files or {}).items():
        write_text(folder / name, text)
    write_text(folder / MANIFEST, json.dumps(manifest_of(model, weights), indent=2) + "\n")
    return folder


def is_saved(folder: str | Path) -> bool:
    """Whether ``folder`` holds a complete save (its manifest is written last)."""
    return (Path(folder) / MANIFEST).is_file()


def load_model(folder: str | Path, kind: str | None = None) -> Model:
    """Load and verify a saved model; ``kind`` (``learner``, ``baim``, ``compact``) if the
    caller needs one in particular."""
    folder = Path(folder)
    mpath, wpath = folder / MANIFEST, folder / WEIGHTS
    if not mpath.is_file() or not wpath.is_file():
        raise ModelFileError(
            f"{folder}: a saved model needs {MANIFEST} and {WEIGHTS}; it is missing or "
            "incomplete (a save that was interrupted leaves no manifest)"
        )
    try:
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise ModelFileError(
                f"{mpath}: {mpath.stat().st_size:,} bytes, over {MAX_MANIFEST_BYTES:,}; not a manifest"
            )
        manifest = json.loads(mpath.read_text())
    except (ValueError, RecursionError, OSError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ModelFileError(f"{mpath}: not valid JSON: {exc}") from exc
    size, claimed = wpath.stat().st_size, manifest.get("weights_bytes") if isinstance(manifest, dict) else None
    if size > MAX_WEIGHTS_BYTES or (claimed is not None and claimed != size):
        raise ModelFileError(
            f"{wpath}: {size:,} bytes, but the manifest says {claimed!r} (limit {MAX_WEIGHTS_BYTES:,}); "
            "the file is truncated, altered or belongs to another model"
        )
    try:
        data = wpath.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{wpath}: cannot read weights: {exc}") from exc
    return model_from(manifest, read_weights(data, str(wpath)), str(folder), kind, sha_of=data)


def to_parts(model: Model) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """What a message carries for ``model``: its manifest and its state dict."""
    state = plain_state(model)
    return manifest_of(model, save_bytes(state)), state


def model_from(
    manifest: Any, state: dict[str, torch.Tensor], source: str, kind: str | None = None, sha_of: bytes | None = None
) -> Model:
    """Rebuild a model from its manifest and weights, verifying both before use.

    ``sha_of`` is the serialized weights as read; without it (weights that arrived in a
    message) the state is serialized again to check the sha256."""
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else type(manifest).__name__
        raise ModelFileError(
            f"{source}: model manifest format {found!r}; this baim reads {FORMAT_VERSION} "
            "(re-create the model with this version of baim)"
        )
    found_kind = manifest.get("kind")
    if found_kind not in KINDS or (kind is not None and found_kind != kind):
        raise ModelFileError(f"{source}: expected a {kind or ' or '.join(KINDS)} model, found {found_kind!r}")
    digest = hashlib.sha256(sha_of if sha_of is not None else save_bytes(state)).hexdigest()
    if digest != manifest.get("weights_sha256"):
        raise ModelFileError(
            f"{source}: weights sha256 {digest[:12]}… does not match the manifest's "
            f"{str(manifest.get('weights_sha256'))[:12]}…; the weights were altered or belong "
            "to another model"
        )
    # The config is checked against the weights on a skeleton without storage: a config that
    # describes more than the weights hold is refused before anything is allocated.
    try:
        build = _builder(found_kind, manifest["config"])
        with torch.device("meta"):
            skeleton = build()
    except (KeyError, TypeError, ValueError, SpecError) as exc:
        raise ModelFileError(f"{source}: model config is malformed: {exc}") from exc
    check_state(skeleton, state, source)
    model = build()
    model.load_state_dict(state)
    return model.eval()


def _builder(kind: str, config: Any) -> Callable[[], Model]:
    """A function that builds the module ``config`` describes (checked here, built later)."""
    if kind == "learner":
        spec = LearnerSpec.from_dict(config)
        return lambda: StagedVAE(spec)
    cfg = BAIMConfig.from_dict(config)
    if kind == "compact" and (len(cfg.task_names) != 1 or cfg.has_tsgate):
        raise ValueError("a compact model describes exactly one task and has no TSGate")
    return lambda: BAIM(cfg)
