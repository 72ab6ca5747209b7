"""``baim cloud add``: a learner a user trained on their own image folder joins a BAIM trained
on Fashion-MNIST as a new task; the old tasks' outputs stay identical; bad input is refused."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from baim.cloud import fuse
from baim.data.layout import make_layout
from baim.learners import StagedVAE, tier_spec
from baim.models import load_model, save_model
from baim.presets import get_preset

pytestmark = pytest.mark.integration


def _baim_run(tmp_path, fmnist):
    """A run folder with a layout and a (fused, untrained: enough here) finetune BAIM."""
    run = tmp_path / "run"
    layout = make_layout(fmnist, get_preset("smoke"), seed=0)
    layout.save(run / "layout.json")
    torch.manual_seed(0)
    learners = [StagedVAE(tier_spec("small")).eval() for _ in layout.task_names]
    save_model(fuse(learners, list(range(len(learners))), layout.task_names, height=1), run / "cloud" / "baim-finetune")
    return run


def _image_folder(path, n=30, seed=0):
    """A user's own images: bright discs of random size on black (not Fashion-MNIST)."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:40, :40]
    for i in range(n):
        r = rng.uniform(5, 15)
        img = ((xx - 20) ** 2 + (yy - 20) ** 2 < r * r).astype(np.uint8) * 255
        Image.fromarray(img).save(path / f"disc_{i:03d}.png")
    return path


def _baim(*args):
    r = subprocess.run([sys.executable, "-m", "baim.cli", *map(str, args)], capture_output=True, text=True, timeout=600)
    r.said = " ".join((r.stdout + r.stderr).split())  # the message, unwrapped
    return r


def test_a_learner_trained_on_a_users_folder_joins_as_a_new_task(tmp_path, fmnist):
    run = _baim_run(tmp_path, fmnist)
    folder = _image_folder(tmp_path / "discs")
    learner = tmp_path / "my-learner"
    r = _baim("edge", "train", "--images", folder, "--tier", "small", "--epochs", 1, "--out", learner)
    assert r.returncode == 0, r.stderr
    add = ("cloud", "add", "--run", run, "--learner", learner, "--task", "discs", "--images", folder, "--epochs", 1)
    r = _baim(*add)  # the user's own learner carries no edge signature: the door refuses it ...
    assert r.returncode == 2 and "unsigned" in r.said and "--accept-unsigned" in r.said
    r = _baim(*add, "--accept-unsigned")  # ... unless the operator lets it in, unverified
    assert r.returncode == 0, r.stderr
    grown = run / "cloud" / "baim-finetune-added-discs"
    report = json.loads((grown / "add.json").read_text())
    old = load_model(run / "cloud" / "baim-finetune", "baim")
    new = load_model(grown, "baim")
    assert new.task_names == [*old.task_names, "discs"] and report["new_tasks"] == ["discs"]
    assert report["admission"]["unverified"] == [0] and report["admission"]["unscreened"] == []
    assert report["untouched_tasks"] == old.task_names and report["untouched_max_abs_diff"] <= 1e-6
    assert np.isfinite(report["test_loss_after"]["discs"])
    assert (grown / "compact" / "discs" / "manifest.json").is_file()
    compact = load_model(grown / "compact" / "discs", "compact")
    assert compact.task_names == ["discs"]
    # the old BAIM folder is untouched
    assert load_model(run / "cloud" / "baim-finetune", "baim").task_names == old.task_names


def test_bad_additions_are_refused_with_a_reason(tmp_path, fmnist):
    run = _baim_run(tmp_path, fmnist)
    folder = _image_folder(tmp_path / "discs", n=12)
    rgb = tmp_path / "rgb"
    save_model(StagedVAE(tier_spec("small", 32, 3)), rgb)
    r = _baim("cloud", "add", "--run", run, "--learner", rgb, "--task", "discs", "--images", folder)
    assert r.returncode == 2 and "3×32²" in r.said and "--channels 1" in r.said
    grey = tmp_path / "grey"
    save_model(StagedVAE(tier_spec("small")), grey)
    r = _baim("cloud", "add", "--run", run, "--learner", grey, "--task", "discs")
    assert r.returncode == 2 and "--images" in r.said
    r = _baim("cloud", "add", "--run", run, "--learner", grey, "--task", "tops", "--images", folder)
    assert r.returncode == 2 and "leave out --images" in r.said
    r = _baim("cloud", "add", "--run", tmp_path / "nothing", "--learner", grey, "--task", "tops")
    assert r.returncode == 2 and "baim run" in r.said
    r = _baim("cloud", "add", "--run", run, "--learner", grey, "--task", "../x", "--images", folder)
    assert r.returncode == 2 and "task name" in r.said
    assert not list((run / "cloud").glob("baim-finetune-added-*"))  # nothing half-written


def test_a_random_weights_learner_is_refused_by_screening(tmp_path, fmnist):
    """`baim cloud add` screens: a learner that never saw its task's images (random weights) is
    refused even when unsigned learners are accepted; only --skip-screening lets it in."""
    run = _baim_run(tmp_path, fmnist)
    junk = tmp_path / "junk"
    torch.manual_seed(1)
    metrics = {"task": "tops", "samples": 500, "test_loss": 0.05}
    save_model(StagedVAE(tier_spec("small")).eval(), junk, {"metrics.json": json.dumps(metrics)})
    add = ("cloud", "add", "--run", run, "--learner", junk, "--task", "tops", "--epochs", 1, "--accept-unsigned")
    r = _baim(*add)
    assert r.returncode == 2 and "refused at the door" in r.said and "--skip-screening" in r.said
    assert not list((run / "cloud").glob("baim-finetune-added-*"))
    r = _baim(*add, "--skip-screening")
    assert r.returncode == 0, r.stderr
    report = json.loads((run / "cloud" / "baim-finetune-added-tops" / "add.json").read_text())
    assert report["admission"]["unscreened"] == [0] and report["admission"]["features"]["0"]["fails"]
