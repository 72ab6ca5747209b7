"""Validation parts of every edge slice and the cloud's common data; per-edge test sets."""

import json

import numpy as np
import pytest

from baim.data.layout import Layout, class_histogram, make_layout
from baim.errors import ConfigError
from baim.presets import get_preset

QUICK = get_preset("quick")


@pytest.fixture(scope="module")
def layout(fmnist):
    return make_layout(fmnist, QUICK, seed=3)


def test_training_validation_and_test_never_overlap(layout, fmnist):
    parts = [("cloud", layout.cloud), ("cloud_val", layout.cloud_val)]
    for e in layout.edges:
        parts += [(f"edge {e.edge}", e.indices), (f"edge {e.edge} val", e.val)]
    seen: dict[int, str] = {}
    for name, idx in parts:
        assert idx, f"{name} is empty"
        for i in idx:
            assert i not in seen, f"training-split image {i} is in {seen[i]} and {name}"
            seen[i] = name
    # test sets index the other split: every index there is a test image of the right task
    test_labels = np.asarray(fmnist.test.labels)
    for e in layout.edges:
        assert set(test_labels[e.test]) <= set(layout.tasks[e.task]["classes"])
    for t in layout.tasks:
        assert set(test_labels[layout.test[t["name"]]]) <= set(t["classes"])


def test_validation_is_a_stratified_tenth_of_each_slice(layout, fmnist):
    assert layout.settings.val_fraction == 0.1
    for e in layout.edges:
        assert len(e.val) == round(0.1 * QUICK.samples_per_edge)
        whole, val = class_histogram(fmnist, e.indices + e.val), class_histogram(fmnist, e.val)
        for c, n in whole.items():  # each class's share, to within one image
            assert abs(val.get(c, 0) - n * len(e.val) / (len(e.indices) + len(e.val))) <= 1, (e.edge, c)
    cloud, cloud_val = class_histogram(fmnist, layout.cloud), class_histogram(fmnist, layout.cloud_val)
    assert set(cloud_val) == set(cloud) == set(range(10))
    assert len(layout.cloud_val) == pytest.approx(0.1 * (len(layout.cloud) + len(layout.cloud_val)), abs=3)


def test_validation_is_carved_from_the_same_slices(fmnist):
    without = make_layout(fmnist, QUICK.with_overrides(val_fraction=0.0), seed=3)
    with_val = make_layout(fmnist, QUICK, seed=3)
    assert without.cloud_val == [] and all(e.val == [] and e.test == [] for e in without.edges)
    for a, b in zip(without.edges, with_val.edges):
        assert sorted(b.indices + b.val) == a.indices and (a.task, a.tier) == (b.task, b.tier)
    assert sorted(with_val.cloud + with_val.cloud_val) == without.cloud
    assert with_val.test == without.test


def _tv(split_labels, idx, hist):
    classes = sorted(hist)
    p = np.array([hist[c] for c in classes], float) / sum(hist.values())
    got = np.array([(split_labels[idx] == c).sum() for c in classes], float) / len(idx)
    return 0.5 * np.abs(p - got).sum()


def test_per_edge_test_sets_have_the_edges_class_mix(layout, fmnist):
    labels = np.asarray(fmnist.test.labels)
    for e in layout.edges:
        assert len(e.test) == len(layout.test[layout.task_names[e.task]]) == QUICK.test_per_task
        assert _tv(labels, e.test, class_histogram(fmnist, e.indices + e.val)) < 0.005, e.edge


def test_per_edge_test_sets_shrink_rather_than_lose_the_mix(fmnist):
    """Paper preset, very skewed edges: a class the edge leans on has only 1000 test images."""
    paper = make_layout(fmnist, get_preset("paper").with_overrides(alpha=0.05), seed=0)
    labels = np.asarray(fmnist.test.labels)
    shrunk = 0
    for e in paper.edges:
        hist = class_histogram(fmnist, e.indices + e.val)
        assert _tv(labels, e.test, hist) < 0.005, e.edge
        assert len(e.test) <= len(paper.test[paper.task_names[e.task]])
        shrunk += len(e.test) < len(paper.test[paper.task_names[e.task]])
    assert shrunk  # the cap was exercised


def test_layout_is_deterministic_for_a_seed(fmnist, layout):
    again = make_layout(fmnist, QUICK, seed=3)
    assert again == layout
    other = make_layout(fmnist, QUICK, seed=4)
    assert other.edges[0].val != layout.edges[0].val and other.edges[0].test != layout.edges[0].test


def test_save_load_and_old_layouts_without_validation(layout, tmp_path):
    path = layout.save(tmp_path / "layout.json")
    assert Layout.load(path) == layout
    raw = json.loads(path.read_text())
    del raw["cloud_val"], raw["preset"]["val_fraction"]
    for e in raw["edges"]:
        del e["val"], e["test"]
    path.write_text(json.dumps(raw))
    old = Layout.load(path)
    assert old.cloud_val == [] and all(e.val == [] and e.test == [] for e in old.edges)
    assert old.settings.val_fraction == 0.0 and old.cloud == layout.cloud
    raw = json.loads(layout.save(tmp_path / "bad.json").read_text())
    raw["edges"][0]["val"][0] = raw["edges"][0]["indices"][0]
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(Exception, match="overlaps"):
        Layout.load(tmp_path / "bad.json")


@pytest.mark.parametrize("bad", [-0.1, 0.6, "0.1", True])
def test_val_fraction_is_checked(bad):
    with pytest.raises(ConfigError, match="val_fraction"):
        QUICK.with_overrides(val_fraction=bad)
