"""What a data set is to baim: labelled uint8 images split into train/test, grouped into tasks.

A *task* is a set of class labels (Fashion-MNIST: "footwear" = sandal, sneaker, ankle boot).
Every loader returns a :class:`DataSet`; the federation layout only ever stores indices into
it, so a layout can be repeated exactly from the same files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..errors import DataError


class ImageSource(Protocol):
    """Indexable labelled images. ``load`` returns uint8 arrays shaped N×C×H×W."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def load(self, indices: Sequence[int] | np.ndarray) -> np.ndarray: ...


@dataclass
class ArraySource:
    """Images held in memory (small data sets such as Fashion-MNIST)."""

    images: np.ndarray  # uint8, N×C×H×W
    labels: np.ndarray  # int64, N

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be uint8 N×C×H×W, got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.images[checked_indices(indices, len(self))]


def checked_indices(indices: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """``indices`` as int64, each in 0..n-1. A negative index would silently wrap around to
    another slice's images and one past the end would fail deep inside numpy, so both are
    refused here, for every source."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise DataError(
            f"image index {bad} is outside this split (0..{n - 1}): the layout does not belong to this "
            "data set or was edited; recreate it with `baim layout`"
        )
    return idx


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[int, ...]


@dataclass
class DataSet:
    name: str
    train: ImageSource
    test: ImageSource
    class_names: list[str]
    tasks: list[Task]
    channels: int
    image_size: int


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 N×C×H×W → float32 tensor in [0, 1], the range the learners model."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float tensor in [0, 1] → uint8 numpy array (what is stored and what FID sees)."""
    return images.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
