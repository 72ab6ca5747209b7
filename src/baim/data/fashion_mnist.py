"""Fashion-MNIST from IDX files (by default Debian's ``dataset-fashion-mnist`` package).

Images are padded from 28×28 to 32×32 so that learners can halve the resolution up to five
times; the default three tasks group the ten classes into tops, footwear, and trousers & bags.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import ArraySource, DataError, DataSet, Task
from .idx import read_idx

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
TASKS = [
    Task("tops", (0, 2, 3, 4, 6)),
    Task("footwear", (5, 7, 9)),
    Task("trousers_bags", (1, 8)),
]
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise DataError(
        f"Fashion-MNIST file {stem}[.gz] not found in {data_dir}. Install Debian's package "
        "with `apt-get install dataset-fashion-mnist` (it puts the files in "
        f"{DEFAULT_DIR}), or pass --data-dir pointing at a folder holding the four IDX files "
        "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz)."
    )


def _split(data_dir: Path, split: str) -> ArraySource:
    img_path, lab_path = (_find(data_dir, s) for s in _FILES[split])
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{img_path}: expected N×28×28 images, got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{lab_path}: expected {len(images)} labels, got shape {labels.shape}")
    if labels.max(initial=0) > 9:
        raise DataError(f"{lab_path}: labels must be 0..9, found {labels.max()}")
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))[:, None]
    return ArraySource(np.ascontiguousarray(padded), labels.astype(np.int64))


def load_fashion_mnist(data_dir: str | Path | None = None) -> DataSet:
    data_dir = Path(data_dir) if data_dir else DEFAULT_DIR
    return DataSet(
        "fashion-mnist",
        _split(data_dir, "train"),
        _split(data_dir, "test"),
        CLASS_NAMES,
        list(TASKS),
        channels=1,
        image_size=32,
    )
