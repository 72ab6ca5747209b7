"""Weights on disk and on the wire: safetensors only (no pickle, ever), checked before use.

:func:`check_state` is the one gate every set of weights passes before it is loaded into a
module: an upload, a saved learner, a BAIM, a compact model. Names must match exactly,
shapes must be the ones the spec implies, and every value must be finite.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from ..errors import ModelFileError


def plain_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict safetensors can write: detached, contiguous, on the CPU."""
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def weights_bytes(module: torch.nn.Module) -> bytes:
    """The module's state dict as one safetensors blob (what is hashed, stored and sent)."""
    return save_bytes(plain_state(module))


def weights_digest(module: torch.nn.Module) -> str:
    """The SHA-256 of :func:`weights_bytes`: the module's weights' identity (a manifest's
    ``weights_sha256``; a cache key for work that depends on the weights alone)."""
    return hashlib.sha256(weights_bytes(module)).hexdigest()


def check_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise ModelFileError if ``state`` does not match ``model`` exactly or holds non-finite values."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelFileError(
            f"{source}: weights do not match the spec (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ModelFileError(
                f"{source}: tensor {k} has shape {tuple(v.shape)}, the spec needs {tuple(expected[k].shape)}"
            )
        if v.dtype != expected[k].dtype:
            raise ModelFileError(f"{source}: tensor {k} is {v.dtype}, the spec needs {expected[k].dtype}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ModelFileError(f"{source}: tensor {k} holds NaN or infinite values")


def read_weights(data: bytes, source: str) -> dict[str, torch.Tensor]:
    """Parse a safetensors blob, or raise ModelFileError naming where it came from. The header
    length (the first 8 bytes) is checked against the blob before the header is read."""
    if len(data) < 8 or int.from_bytes(data[:8], "little") > len(data) - 8:
        claimed = int.from_bytes(data[:8], "little") if len(data) >= 8 else None
        raise ModelFileError(
            f"{source}: not a readable safetensors file: its header claims {claimed!r} bytes, "
            f"the file has {len(data)} (truncated or not safetensors)"
        )
    try:
        return load_bytes(data)
    except Exception as exc:  # noqa: BLE001 - the parser raises several types on garbage; all mean "unreadable"
        raise ModelFileError(f"{source}: not a readable safetensors file: {exc}") from exc


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read weights: {exc}") from exc
    return read_weights(data, str(path))
