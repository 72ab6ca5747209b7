"""A user's own images: one subfolder per task under ``root`` (``root/<task>/*.png|jpg``).

Each task is a single class. Hidden entries (names starting with a dot) are ignored. A seeded
20 % of every task is held out as its test split, so the same folder and seed always give the
same split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..names import check_task_names
from .base import ArraySource, DataError, DataSet, Task

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _hidden(p: Path) -> bool:
    """Hidden entries (``.git``, ``.ipynb_checkpoints``, macOS ``._x.png``) are never tasks or images."""
    return p.name.startswith(".")


def load_image_folder(
    root: str | Path, image_size: int = 32, channels: int = 3, test_fraction: float = 0.2, seed: int = 0
) -> DataSet:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; give a folder with one subfolder per task")
    task_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p))
    if not task_dirs:
        raise DataError(f"{root} has no subfolders; put each task's images in root/<task>/")
    check_task_names([d.name for d in task_dirs], f"task folders of {root}")  # before any image is read
    images, labels = [], []
    for t, d in enumerate(task_dirs):
        arr = read_images(d, image_size, channels)
        images.append(arr)
        labels += [t] * len(arr)
    images_np, labels_np = np.concatenate(images), np.array(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(labels_np), dtype=bool)
    for t in range(len(task_dirs)):
        idx = np.flatnonzero(labels_np == t)
        test_mask[rng.permutation(idx)[: max(1, int(round(test_fraction * len(idx))))]] = True
    names = [d.name for d in task_dirs]
    return DataSet(
        "image-folder",
        ArraySource(images_np[~test_mask], labels_np[~test_mask]),
        ArraySource(images_np[test_mask], labels_np[test_mask]),
        names,
        [Task(n, (t,)) for t, n in enumerate(names)],
        channels,
        image_size,
    )


def read_images(folder: str | Path, image_size: int = 32, channels: int = 3) -> np.ndarray:
    """Every image directly in ``folder`` (sorted by name), resized to ``image_size`` and
    converted to ``channels``: uint8 (N, C, H, W)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} not found")
    if channels not in (1, 3):
        raise DataError(f"images have 1 (grey) or 3 (RGB) channels, not {channels}")
    mode = {1: "L", 3: "RGB"}[channels]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file() and not _hidden(p))
    if not files:
        raise DataError(f"folder {folder} holds no images ({', '.join(sorted(EXTENSIONS))})")
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert(mode).resize((image_size, image_size), Image.Resampling.BILINEAR))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {f}: {exc} (replace or remove the file)") from exc
        out.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
    return np.stack(out).astype(np.uint8)
