"""``baim cloud add``: a learner that arrives after a run joins its BAIM (continual learning).

The learner (a saved learner folder: an edge's upload, or one a user trained on their own
images with ``baim edge train --images``) joins the squad of a task the BAIM knows, or opens a
new task. A new task brings the cloud's common images for it (``images``, a folder of images
of the BAIM's geometry after resizing): a seeded 80 % trains the new parts, 20 % is held out to
measure it (and 10 % chooses its download). :func:`baim.cloud.continual.integrate` does the growing
and training; this module reads the run, checks the newcomer, and writes the grown BAIM and the
touched tasks' compact models beside the old ones (the old BAIM is never overwritten), with a
report of what changed. The newcomer's own download is chosen as every edge's is
(:mod:`baim.cloud.delivery`: within the run's download budget of its learner's bytes, on
validation images: the new task's 10 %, or the run's common validation images of a known
task) and saved as ``delivered/``; the report sets the learner alone beside the BAIM and the
delivered model on the held-out images.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_json
from ..data import DataSet
from ..data.image_folder import read_images
from ..data.layout import Layout
from ..errors import ConfigError
from ..learners import LearnerSpec, StagedVAE, weights_bytes
from ..models import load_model, reconstruction_metrics, save_model
from ..names import check_task_name
from ..runfiles import RunFiles
from ..runview import Run
from ..transport import decode
from .continual import integrate
from .delivery import Deliveries, budget_bytes
from .door import NO_WAIVERS, Waivers, admit
from .partition import partition
from .pipeline import common_data
from .uploads import folder_upload

HELD_OUT = 0.2
VALIDATION = 0.1  # of a new task's images: where its delivery is chosen (neither trained on nor held out)


def _spec_of(path: Path) -> LearnerSpec:
    """The learner's spec, for the geometry check (the door checks everything else)."""
    if path.is_file():  # an edge's upload message
        spec = decode(path.read_bytes()).meta.get("spec")
        if not isinstance(spec, dict):
            raise ConfigError(f"{path} is not an upload message with a learner spec")
        return LearnerSpec.from_dict(spec)
    model = load_model(path, "learner")
    assert isinstance(model, StagedVAE)
    return model.spec


def _admit(
    path: Path,
    task: str,
    images: np.ndarray,
    names: list[str],
    model: Any,
    keys: dict[int, str] | None,
    waivers: Waivers,
) -> tuple[StagedVAE, dict]:
    """The newcomer through the door, screened on every task's common images (a new task's
    among them); its report, or ConfigError with the door's reason."""
    offered = path.read_bytes() if path.is_file() else folder_upload(path, task=task)
    meta = decode(offered).meta
    if meta.get("task") != task:
        raise ConfigError(f"{path} is an upload for task {meta.get('task')!r}, offered here as {task!r}")
    tasks = list(dict.fromkeys([*model.task_names, task]))
    common = {t: images[np.asarray(names) == name] for t, name in enumerate(tasks)}
    inside = {f"learner {i} of the BAIM": model.learner(i) for i in range(len(model.learners))}
    admitted = admit(
        {0: offered}, tasks, common, model.image_size, model.channels, keys=keys, waivers=waivers, earlier=inside
    )
    if 0 not in admitted.accepted:
        (why,) = [r["reason"] for r in admitted.rejected + admitted.quarantined]
        raise ConfigError(
            f"learner {path} refused at the door: {why}. A learner you trust enters with --accept-unsigned "
            "(no signature) or --skip-screening (recorded in add.json)"
        )
    return admitted.accepted[0][0], admitted.report()


def _cloud_val(layout: Layout, ds: DataSet, task: int) -> np.ndarray:
    """The validation part of the run's common data that belongs to ``task``."""
    classes = set(layout.tasks[task]["classes"])
    labels = np.asarray(ds.train.labels)
    return ds.train.load([i for i in layout.cloud_val if int(labels[i]) in classes])


def add_to_run(
    run_dir: str | Path,
    learner_dir: str | Path,
    task: str,
    images_dir: str | Path | None = None,
    strategy: str = "finetune",
    epochs: int | None = None,
    train_old: bool = False,
    out: str | Path | None = None,
    seed: int = 0,
    keys: dict[int, str] | None = None,
    waivers: Waivers = NO_WAIVERS,
) -> dict[str, Any]:
    """Grow the run's ``strategy`` BAIM by the learner in ``learner_dir`` for ``task`` and save
    it (default ``RUN/cloud/baim-STRATEGY-added-TASK``), with compact models of the touched
    tasks under ``OUT/compact/``; returns the report (also written to ``OUT/add.json``). The
    learner comes in through the door (:func:`baim.cloud.door.admit`): signed by a key in
    ``keys`` and screened against the task's common images, unless ``waivers`` say otherwise."""
    run = Run(run_dir)
    source = run.files.baim(strategy)
    if not run.files.layout.is_file() or not source.is_dir():
        raise ConfigError(f"{run.root} holds no trained {strategy} BAIM (expected {source}); run `baim run` first")
    check_task_name(task)
    layout = run.layout
    ds = run.dataset()
    model = run.baim(strategy)
    spec = _spec_of(Path(learner_dir))
    if (spec.image_size, spec.channels) != (model.image_size, model.channels):
        raise ConfigError(
            f"learner {learner_dir} works on {spec.channels}×{spec.image_size}² images, the BAIM on "
            f"{model.channels}×{model.image_size}²: train it on images of the BAIM's geometry "
            f"(`baim edge train --images DIR --image-size {model.image_size} --channels {model.channels}`)"
        )
    images, tasks = common_data(layout, ds)
    names = [layout.task_names[t] for t in tasks]
    test_sets = {name: ds.test.load(layout.test[name][:256]) for name in layout.task_names}
    if task not in model.task_names:
        if images_dir is None:
            raise ConfigError(
                f"task {task!r} is new to this BAIM (it knows {', '.join(model.task_names)}): give the cloud's "
                "common images of it with --images DIR"
            )
        own = read_images(images_dir, model.image_size, model.channels)
        if len(own) < 10:
            raise ConfigError(f"{images_dir} holds {len(own)} images; a new task needs at least 10 common images")
        order = np.random.default_rng(seed).permutation(len(own))
        cut = max(1, int(round(HELD_OUT * len(own))))
        n_val = max(1, int(round(VALIDATION * len(own))))
        test_sets[task] = own[order[:cut]]
        val = own[order[cut : cut + n_val]]
        images = np.concatenate([images, own[order[cut + n_val :]]])
        names += [task] * (len(own) - cut - n_val)
    elif images_dir is not None:
        raise ConfigError(f"task {task!r} is one of the BAIM's: its common data is the run's; leave out --images")
    else:
        val = _cloud_val(layout, ds, layout.task_names.index(task))
    learner, admission = _admit(Path(learner_dir), task, images, names, model, keys, waivers)
    recipe = layout.settings.cloud
    if epochs is not None:
        recipe = replace(recipe, epochs=epochs)
    upload = copy.deepcopy(learner)  # the learner as it came: integrate trains the one that joins
    report = integrate(
        model, [(learner, task)], images, names, recipe, train_old=train_old, test_sets=test_sets, seed=seed
    )
    target = Path(out) if out is not None else run.files.added(strategy, task)
    save_model(model, target)
    compact = {}
    for name in report["touched_tasks"] if not train_old else model.task_names:
        folder = save_model(partition(model, model.task_names.index(name)), RunFiles.compact_beside(target, name))
        compact[name] = (folder / "weights.safetensors").stat().st_size
    t = model.task_names.index(task)
    own_common = images[np.array(names) == task]
    budget = budget_bytes(layout.settings.download_budget, len(weights_bytes(upload)))
    delivery = Deliveries(model, {t: own_common}, layout.settings.cloud, seed).deliver(-1, t, upload, budget, val)
    save_model(delivery.model, target / "delivered")
    held_out = test_sets[task]
    report |= {
        "delivery": {k: v for k, v in delivery.record().items() if k != "candidates"},
        "held_out_loss": {
            "learner": reconstruction_metrics(upload, held_out, 0, recipe.kld_weight, seed=seed)["test_loss"],
            "delivered": reconstruction_metrics(delivery.model, held_out, 0, recipe.kld_weight, seed=seed)["test_loss"],
            "baim": reconstruction_metrics(model, held_out, t, recipe.kld_weight, seed=seed)["test_loss"],
        },
        "run": str(run.root),
        "source": str(source),
        "saved": str(target),
        "learner": str(learner_dir),
        "compact_bytes": compact,
        "admission": admission,
        "learner_bytes": (Path(learner_dir) / "weights.safetensors").stat().st_size,
    }
    report["log"] = [{k: v for k, v in row.items() if k != "usage"} for row in report["log"]]
    write_json(target / "add.json", report)
    return json.loads(json.dumps(report))
