"""CelebA (original file layout) and image-folder loaders on tiny generated fixtures."""

import numpy as np
import pytest
from PIL import Image

from baim.config import Recipe
from baim.data import DataError, load_dataset
from baim.data.celeba import CLASS_ATTRIBUTES
from baim.data.layout import make_layout
from baim.presets import get_preset


def _write_celeba(root, n=24, seed=0):
    rng = np.random.default_rng(seed)
    (root / "img_align_celeba").mkdir(parents=True)
    names = ["5_o_Clock_Shadow", "Male", "Smiling", "Young", "Eyeglasses"]
    attr_lines = [str(n), " ".join(names)]
    part_lines = []
    for i in range(1, n + 1):
        f = f"{i:06d}.jpg"
        img = np.zeros((218, 178, 3), dtype=np.uint8)
        img[35:183, 15:163] = (i * 9) % 256  # the centre 148×148 crop carries the image id
        Image.fromarray(img).save(root / "img_align_celeba" / f, quality=95)
        vals = rng.choice([-1, 1], size=len(names))
        attr_lines.append(f + "  " + " ".join(f"{v:2d}" for v in vals))
        part_lines.append(f"{f} {0 if i <= n - 6 else 2}")
    (root / "list_attr_celeba.txt").write_text("\n".join(attr_lines) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(part_lines) + "\n")


def test_celeba_fixture_loads_crops_and_labels(tmp_path):
    _write_celeba(tmp_path)
    ds = load_dataset("celeba", str(tmp_path))
    assert len(ds.train) == 18 and len(ds.test) == 6
    x = ds.train.load([0, 3])
    assert x.shape == (2, 3, 64, 64) and x.dtype == np.uint8
    # the crop keeps only the centre patch, whose grey level encodes the image id
    assert abs(int(x[1].mean()) - (4 * 9) % 256) <= 2
    assert ds.train.labels.max() < 2 ** len(CLASS_ATTRIBUTES)
    assert [t.name for t in ds.tasks] == ["women", "men"]
    # tasks split classes by the Male bit
    male_bit = 2 ** (len(CLASS_ATTRIBUTES) - 1)
    assert all(c >= male_bit for c in ds.tasks[1].classes)


def test_celeba_layout(tmp_path):
    _write_celeba(tmp_path, n=60)
    ds = load_dataset("celeba", str(tmp_path))
    p = get_preset("smoke").with_overrides(
        num_edges=2, samples_per_edge=8, cloud_samples=8, test_per_task=0, edge=Recipe(1)
    )
    layout = make_layout(ds, p, seed=0)
    assert sum(len(v) for v in layout.test.values()) == len(ds.test)


def test_celeba_missing_files_named(tmp_path):
    with pytest.raises(DataError, match="list_attr_celeba.txt|img_align_celeba"):
        load_dataset("celeba", str(tmp_path))
    _write_celeba(tmp_path)
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 7\n")
    with pytest.raises(DataError, match="list_eval_partition.txt:1"):
        load_dataset("celeba", str(tmp_path))


def test_image_folder(tmp_path):
    for task, level in (("cats", 50), ("dogs", 200)):
        (tmp_path / task).mkdir()
        for i in range(10):
            Image.fromarray(np.full((40, 30, 3), level, dtype=np.uint8)).save(tmp_path / task / f"{i}.png")
    ds = load_dataset("image-folder", str(tmp_path), image_size=32, channels=3)
    assert [t.name for t in ds.tasks] == ["cats", "dogs"]
    assert len(ds.train) == 16 and len(ds.test) == 4
    x = ds.test.load(range(len(ds.test)))
    assert x.shape[1:] == (3, 32, 32)
    for img, lab in zip(x, ds.test.labels):
        assert int(img.mean()) == (50 if lab == 0 else 200)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no subfolders"):
        load_dataset("image-folder", str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_dataset("image-folder", str(tmp_path))
