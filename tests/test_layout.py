import json

import numpy as np
import pytest

from baim.data.layout import Layout, assign_tasks, class_histogram, make_layout
from baim.presets import get_preset


@pytest.fixture(scope="module")
def quick_layout(fmnist):
    return make_layout(fmnist, get_preset("quick"), seed=3)


def test_slices_disjoint_and_sized(quick_layout, fmnist):
    p = get_preset("quick")
    all_idx = quick_layout.cloud + quick_layout.cloud_val + [i for e in quick_layout.edges for i in e.indices + e.val]
    assert len(all_idx) == len(set(all_idx))
    assert all(len(e.indices) + len(e.val) == p.samples_per_edge for e in quick_layout.edges)
    assert abs(len(quick_layout.cloud) + len(quick_layout.cloud_val) - p.cloud_samples) <= len(fmnist.class_names)
    tests = [i for v in quick_layout.test.values() for i in v]
    assert len(tests) == len(set(tests))


def test_edges_only_hold_their_task(quick_layout, fmnist):
    for e in quick_layout.edges:
        classes = set(quick_layout.tasks[e.task]["classes"])
        assert set(class_histogram(fmnist, e.indices)) <= classes


def test_cloud_covers_all_classes(quick_layout, fmnist):
    assert set(class_histogram(fmnist, quick_layout.cloud)) == set(range(10))


def test_reproducible_from_seed(fmnist):
    a = make_layout(fmnist, get_preset("quick"), seed=11)
    b = make_layout(fmnist, get_preset("quick"), seed=11)
    c = make_layout(fmnist, get_preset("quick"), seed=12)
    assert a == b
    assert a.edges[0].indices != c.edges[0].indices


def test_non_iid_skew_is_present(fmnist):
    """With small α the edges' class mixes are far from their task's uniform mix."""
    skewed = make_layout(fmnist, get_preset("quick").with_overrides(alpha=0.1), seed=0)
    near_iid = make_layout(fmnist, get_preset("quick").with_overrides(alpha=1000.0), seed=0)

    def mean_tv(layout):
        tvs = []
        for e in layout.edges:
            classes = layout.tasks[e.task]["classes"]
            h = class_histogram(fmnist, e.indices)
            p = np.array([h.get(c, 0) for c in classes], dtype=float) / len(e.indices)
            tvs.append(0.5 * np.abs(p - 1 / len(classes)).sum())
        return float(np.mean(tvs))

    assert mean_tv(skewed) > 0.3
    assert mean_tv(near_iid) < 0.05


def test_save_load_roundtrip_and_overlap_rejected(quick_layout, tmp_path):
    path = quick_layout.save(tmp_path / "layout.json")
    assert Layout.load(path) == quick_layout
    raw = json.loads(path.read_text())
    raw["edges"][1]["indices"][0] = raw["edges"][0]["indices"][0]
    path.write_text(json.dumps(raw))
    with pytest.raises(Exception, match="overlaps"):
        Layout.load(path)


def test_tiers_mix_within_tasks(fmnist):
    for preset in ("quick", "paper"):
        layout = make_layout(fmnist, get_preset(preset), seed=0)
        assert {e.tier for e in layout.edges} == {"small", "medium", "large"}
        for t in range(3):
            tiers = [e.tier for e in layout.edges if e.task == t]
            assert len(tiers) >= 1 and (len(tiers) < 2 or len(set(tiers)) >= 2)


def test_tasks_get_edges_in_proportion_to_size():
    assert sorted(assign_tasks(10, [30000, 18000, 12000])) == [0] * 5 + [1] * 3 + [2] * 2
    assert assign_tasks(3, [5, 100, 5]) == [0, 1, 2]
    with pytest.raises(Exception, match="at least one per task"):
        assign_tasks(2, [1, 1, 1])


def test_paper_preset_eleven_equal_parts(fmnist):
    layout = make_layout(fmnist, get_preset("paper"), seed=0)
    sizes = {len(e.indices) + len(e.val) for e in layout.edges}
    assert len(layout.edges) == 10 and sizes == {60000 // 11}
    assert len(layout.cloud) + len(layout.cloud_val) == pytest.approx(60000 // 11, abs=10)
    assert sum(len(v) for v in layout.test.values()) == 10000
