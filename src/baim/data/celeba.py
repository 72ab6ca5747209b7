"""CelebA in its original file layout, for the paper's own experiment.

Expected under ``root``: ``img_align_celeba/*.jpg``, ``list_attr_celeba.txt`` and
``list_eval_partition.txt``. Images are centre-cropped to 148×148 and resized to 64×64 RGB,
and decoded lazily (the full set does not fit comfortably in memory as float).

Classes are the 2^k patterns of ``CLASS_ATTRIBUTES``; a task is a predicate over them
(default: women / men, so the Dirichlet skew runs over smiling × young inside each task).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .base import DataError, DataSet, Task, checked_indices

CLASS_ATTRIBUTES = ("Male", "Smiling", "Young")
CROP, SIZE = 148, 64


def _class_names() -> list[str]:
    names = []
    for code in range(2 ** len(CLASS_ATTRIBUTES)):
        bits = [(code >> (len(CLASS_ATTRIBUTES) - 1 - i)) & 1 for i in range(len(CLASS_ATTRIBUTES))]
        names.append("+".join(a if b else f"not-{a}" for a, b in zip(CLASS_ATTRIBUTES, bits)))
    return names


def _tasks() -> list[Task]:
    half = 2 ** (len(CLASS_ATTRIBUTES) - 1)
    return [Task("women", tuple(range(half))), Task("men", tuple(range(half, 2 * half)))]


@dataclass
class CelebASource:
    """Lazy CelebA split: decodes, crops and resizes only the images asked for."""

    image_dir: Path
    files: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.files)

    def load(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), 3, SIZE, SIZE), dtype=np.uint8)
        for k, i in enumerate(checked_indices(indices, len(self))):
            path = self.image_dir / self.files[i]
            try:
                with Image.open(path) as raw:
                    im = raw.convert("RGB")
                    w, h = im.size
                    left, top = (w - CROP) // 2, (h - CROP) // 2
                    im = im.crop((left, top, left + CROP, top + CROP)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
                    out[k] = np.asarray(im).transpose(2, 0, 1)
            except OSError as exc:
                raise DataError(f"cannot read CelebA image {path}: {exc}") from exc
        return out


def _read_attrs(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise DataError(f"{path}: expected a count line and an attribute-name line")
    names = lines[1].split()
    missing = [a for a in CLASS_ATTRIBUTES if a not in names]
    if missing:
        raise DataError(f"{path}: attributes {missing} not in header")
    rows = {}
    for n, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1:
            raise DataError(f"{path}:{n}: expected {len(names) + 1} fields, got {len(parts)}")
        rows[parts[0]] = np.array([int(v) for v in parts[1:]], dtype=np.int64)
    return names, rows


def load_celeba(root: str | Path) -> DataSet:
    root = Path(root)
    image_dir, attr_path, part_path = (
        root / "img_align_celeba",
        root / "list_attr_celeba.txt",
        root / "list_eval_partition.txt",
    )
    for p in (image_dir, attr_path, part_path):
        if not p.exists():
            raise DataError(
                f"CelebA: {p} not found. --data-dir must hold img_align_celeba/, "
                "list_attr_celeba.txt and list_eval_partition.txt as distributed by the "
                "data set's authors (baim never downloads it)."
            )
    names, attrs = _read_attrs(attr_path)
    cols = [names.index(a) for a in CLASS_ATTRIBUTES]
    splits: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for n, line in enumerate(part_path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{part_path}:{n}: expected '<file> <0|1|2>', got {line!r}")
        if parts[0] not in attrs:
            raise DataError(f"{part_path}:{n}: {parts[0]} has no row in {attr_path.name}")
        splits[int(parts[1])].append(parts[0])

    def source(files: list[str]) -> CelebASource:
        bits = np.array([[attrs[f][c] > 0 for c in cols] for f in files], dtype=np.int64).reshape(-1, len(cols))
        weights = 2 ** np.arange(len(cols) - 1, -1, -1)
        return CelebASource(image_dir, files, bits @ weights)

    # The official validation split joins training: baim's cloud common data and edge slices
    # both come from it, and the official test split stays untouched for evaluation.
    return DataSet(
        "celeba",
        source(splits[0] + splits[1]),
        source(splits[2]),
        _class_names(),
        _tasks(),
        channels=3,
        image_size=SIZE,
    )
