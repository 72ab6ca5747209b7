"""Save and load a learner as ``spec.json`` + ``weights.safetensors`` (no pickle, ever).

Loading validates before anything is used: the spec must be valid, every tensor must be
present with the shape the spec implies, and every value must be finite. This is the same
check the cloud applies to uploads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import atomic_write, write_text
from .spec import LearnerSpec, SpecError
from .vae import StagedVAE

SPEC_FILE, WEIGHTS_FILE = "spec.json", "weights.safetensors"


class LearnerFileError(ValueError):
    """A saved learner is incomplete, inconsistent with its spec, or contains bad values."""


def plain_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict safetensors can write: detached, contiguous, on the CPU."""
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_weights(module: torch.nn.Module, path: str | Path) -> Path:
    """Write a module's state dict as safetensors, atomically."""
    state = plain_state(module)
    return atomic_write(path, lambda tmp: save_file(state, tmp))


def save_learner(model: StagedVAE, folder: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    folder = Path(folder)
    save_weights(model, folder / WEIGHTS_FILE)
    for name, text in (extra_files or {}).items():
        write_text(folder / name, text)
    # The spec is written last: its presence marks a complete save.
    write_text(folder / SPEC_FILE, model.spec.to_json())
    return folder


def check_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise if ``state`` does not match ``model`` exactly or holds non-finite values."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise LearnerFileError(f"{source}: weights do not match the spec (missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]})")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise LearnerFileError(f"{source}: tensor {k} has shape {tuple(v.shape)}, "
                                   f"the spec needs {tuple(expected[k].shape)}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise LearnerFileError(f"{source}: tensor {k} holds NaN or infinite values")


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, or raise LearnerFileError naming it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise LearnerFileError(f"{path}: not a readable safetensors file: {exc}") from exc


def load_learner(folder: str | Path) -> StagedVAE:
    folder = Path(folder)
    spec_path, weights_path = folder / SPEC_FILE, folder / WEIGHTS_FILE
    if not spec_path.is_file() or not weights_path.is_file():
        raise LearnerFileError(f"{folder}: a saved learner needs {SPEC_FILE} and {WEIGHTS_FILE}")
    try:
        spec = LearnerSpec.from_dict(json.loads(spec_path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise LearnerFileError(f"{spec_path}: not a valid spec: {exc}") from exc
    except SpecError as exc:
        raise LearnerFileError(f"{spec_path}: {exc}") from exc
    state = load_weights(weights_path)
    model = StagedVAE(spec)
    check_state(model, state, str(weights_path))
    model.load_state_dict(state)
    return model.eval()
