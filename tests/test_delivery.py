"""Per-edge delivery: every edge's download fits its own budget and is never worse than its
upload on validation; a budget nothing fits falls back to the upload and says so."""

import json

import numpy as np
import pytest
import torch

from baim.cloud import fuse
from baim.cloud.budget import compact_bytes, lossless_compact
from baim.cloud.delivery import CANDIDATES, Deliveries, as_compact, budget_bytes, with_prior
from baim.config import Recipe, parse_download_budget
from baim.errors import ConfigError
from baim.learners import weights_bytes
from baim.models import BAIM, LatentPrior, load_model, reconstruction_metrics, save_model
from conftest import look_trained, trained_learners

# squads: task 0 = learners 0 (small), 1 (medium); task 1 = 2 (large), 3 (small)
TIERS, TASKS = ["small", "medium", "large", "small"], [0, 0, 1, 1]
RNG = np.random.default_rng(0)
COMMON = {t: RNG.integers(0, 256, (24, 1, 32, 32), dtype=np.uint8) for t in (0, 1)}
VAL = RNG.integers(0, 256, (16, 1, 32, 32), dtype=np.uint8)
RECIPE = Recipe(1, batch_size=16, lr=0.005, trained_lr_scale=0.1, keep_norm_stats=True)


@pytest.fixture(scope="module")
def setup():
    learners = trained_learners(TIERS, 0)
    model = look_trained(fuse(trained_learners(TIERS, 0), TASKS, ["a", "b"], top_k=2, height=1), 0.2, 0.5)
    model.prune_connections(0.5)
    return model.eval(), learners


def _loss(model, images=VAL) -> float:
    return reconstruction_metrics(model, images, 0, RECIPE.kld_weight, seed=0)["test_loss"]


def test_budget_parsing():
    assert parse_download_budget("1.25") == ("factor", 1.25)
    assert parse_download_budget("3MB") == ("bytes", 3e6)
    assert parse_download_budget(" None ") is None
    assert budget_bytes("1.25", 1000) == 1250 and budget_bytes("0.5MB", 1000) == 500_000
    assert budget_bytes("none", 1000) is None
    for bad in ("", "-1", "0", "x", "3GB", "inf"):
        with pytest.raises(ConfigError, match="download budget"):
            parse_download_budget(bad)


def test_an_upload_as_a_compact_model_is_exactly_the_upload(setup, tmp_path):
    _, learners = setup
    up = learners[1]
    compact = as_compact(up, "a")
    assert _loss(compact) == pytest.approx(_loss(up), abs=1e-7)
    loaded = load_model(save_model(compact, tmp_path / "c"), "compact")
    assert _loss(loaded) == pytest.approx(_loss(up), abs=1e-7)
    # what it costs beyond the learner: an identity adapter, a one-way gate, the prior
    assert compact_bytes(compact) < 1.1 * len(weights_bytes(up))


@pytest.mark.parametrize("rank", [0, 3])
def test_compact_priors_are_smaller_fit_and_survive_save(setup, tmp_path, rank):
    model, _ = setup
    full = lossless_compact(model, 0)
    small = with_prior(full, rank)
    codes = torch.randn(400, small.latent_dim) * torch.linspace(0.5, 2, small.latent_dim) + 1
    small.prior(0).fit(codes)
    d = small.latent_dim
    assert compact_bytes(full) - compact_bytes(small) >= 4 * (d * d - d * (rank + 1)) - 200  # header: names
    z = small.prior(0).sample(4000, torch.Generator().manual_seed(0))
    assert torch.allclose(z.mean(0), codes.mean(0), atol=0.15)
    assert torch.allclose(z.std(0), codes.std(0), rtol=0.1)
    loaded = load_model(save_model(small, tmp_path / "p"), "compact")
    assert loaded.config.prior_rank == rank
    g = torch.Generator
    assert torch.equal(loaded.generate(0, 3, g().manual_seed(1)), small.generate(0, 3, g().manual_seed(1)))
    x = torch.rand(5, 1, 32, 32)  # reconstructions do not depend on the prior
    assert torch.equal(small(x, sample=False).x_hat, full(x, sample=False).x_hat)
    with pytest.raises(ValueError, match="rank"):
        LatentPrior(4, 4)


def test_every_tier_gets_a_download_within_its_budget_never_worse_than_its_upload(setup, monkeypatch):
    model, learners = setup
    factor = 1.25
    monkeypatch.setattr("baim.cloud.delivery.DISTILL_EPOCHS", 1)
    deliveries = Deliveries(model, COMMON, RECIPE)
    chosen = set()
    for edge, (up, task) in enumerate(zip(learners, TASKS)):
        budget = budget_bytes(str(factor), compact_bytes(up))
        d = deliveries.deliver(edge, task, up, budget, VAL)
        rec = d.record()
        assert rec["within_budget"] and d.bytes == compact_bytes(d.model) <= budget, rec
        assert d.val_loss == pytest.approx(_loss(d.model), rel=1e-6)
        assert d.val_loss <= d.upload_val_loss == pytest.approx(_loss(up), rel=1e-6)
        assert set(rec["candidates"]) == set(CANDIDATES) and d.candidate in CANDIDATES and rec["reason"]
        for c in rec["candidates"].values():  # every candidate that was built is measured
            assert "error" in c or {"bytes", "val_loss", "fits"} <= set(c)
        chosen.add(d.candidate)
    assert chosen  # a record per edge


def test_the_lossless_model_when_it_fits_and_without_a_budget(setup):
    model, learners = setup
    deliveries = Deliveries(model, COMMON, RECIPE)
    d = deliveries.deliver(0, 0, learners[0], None, VAL)
    assert d.candidate == "lossless" and d.budget_bytes is None
    x = torch.rand(6, 1, 32, 32)
    t = torch.zeros(6, dtype=torch.long)
    assert torch.allclose(d.model(x, t, sample=False).x_hat, model(x, t, sample=False).x_hat, atol=1e-6)
    huge = deliveries.deliver(0, 0, learners[0], 10**9, VAL)
    assert huge.candidates["lossless"]["fits"] and huge.candidates["lossless"]["prior"] == "full"


def test_a_budget_too_small_for_anything_falls_back_to_the_upload_and_says_so(setup):
    model, learners = setup
    d = Deliveries(model, COMMON, RECIPE).deliver(3, 1, learners[3], 1000, VAL)
    assert d.candidate == "upload" and not d.record()["within_budget"]
    assert "no candidate fits the budget of 1,000 bytes" in d.reason and "keeps its own upload" in d.reason
    assert d.val_loss == pytest.approx(d.upload_val_loss, rel=1e-6)


def test_without_validation_images_only_the_lossless_model_or_the_upload(setup):
    model, learners = setup
    deliveries = Deliveries(model, COMMON, RECIPE)
    small = deliveries.deliver(0, 0, learners[0], budget_bytes("1.25", compact_bytes(learners[0])), VAL[:0])
    assert small.candidate == "upload" and "no validation images" in small.reason and small.val_loss is None
    big = deliveries.deliver(0, 0, learners[0], 10**9, VAL[:0])
    assert big.candidate == "lossless" and set(big.candidates) == {"lossless", "upload"}


def test_a_worse_candidate_is_never_chosen(setup, monkeypatch):
    """Candidates that fit but lose to the upload on validation are passed over."""
    model, learners = setup
    deliveries = Deliveries(model, COMMON, RECIPE)
    broken = lossless_compact(model, 0)
    with torch.no_grad():
        for l in broken.squad(0):
            broken.learner(l).image_head.bias.fill_(-20.0)  # all-black images
    deliveries._lossless[0] = broken
    monkeypatch.setattr(Deliveries, "_distilled", lambda self, task, upload: broken_learner(upload))
    d = deliveries.deliver(0, 0, learners[0], 10**9, VAL)
    assert d.candidates["lossless"]["val_loss"] > d.upload_val_loss
    assert d.candidate == "upload" and "worse on validation" in d.reason, d.reason


def broken_learner(upload):
    import copy

    out = copy.deepcopy(upload)
    with torch.no_grad():
        out.image_head.bias.fill_(-20.0)
    return out


def test_delivered_models_are_compact_models(setup, tmp_path):
    model, learners = setup
    d = Deliveries(model, COMMON, RECIPE).deliver(
        1, 0, learners[1], budget_bytes("1.25", compact_bytes(learners[1])), VAL
    )
    assert isinstance(d.model, BAIM) and d.model.tsgate is None and d.model.task_names == ["a"]
    load_model(save_model(d.model, tmp_path / "d"), "compact")


@pytest.mark.integration
def test_cloud_add_delivers_the_new_task_within_budget(tmp_path, fmnist):
    from PIL import Image

    from baim.cloud.add import add_to_run
    from baim.data.layout import make_layout
    from baim.learners import StagedVAE, tier_spec
    from baim.presets import get_preset

    run = tmp_path / "run"
    layout = make_layout(fmnist, get_preset("smoke"), seed=0)
    layout.save(run / "layout.json")
    torch.manual_seed(0)
    olds = [StagedVAE(tier_spec("medium")).eval() for _ in layout.task_names]
    save_model(fuse(olds, list(range(len(olds))), layout.task_names, height=1), run / "cloud" / "baim-finetune")
    folder = tmp_path / "discs"
    folder.mkdir()
    yy, xx = np.mgrid[:32, :32]
    for i, r in enumerate(np.random.default_rng(0).uniform(4, 14, 30)):
        Image.fromarray(((xx - 16) ** 2 + (yy - 16) ** 2 < r * r).astype(np.uint8) * 255).save(folder / f"{i}.png")
    from baim.cloud.door import Waivers

    # an untrained, unsigned learner: let in on the operator's word
    metrics = {"task": "discs", "samples": 30, "test_loss": 0.05}
    learner = save_model(
        StagedVAE(tier_spec("small")).eval(), tmp_path / "learner", {"metrics.json": json.dumps(metrics)}
    )
    waivers = Waivers(accept_unsigned=True, skip_screening=True)
    report = add_to_run(run, learner, "discs", images_dir=folder, epochs=1, waivers=waivers)
    d = report["delivery"]
    assert d["within_budget"] and d["bytes"] <= d["budget_bytes"] == int(1.25 * d["upload_bytes"])
    assert d["val_loss"] <= d["upload_val_loss"] and d["reason"]
    assert set(report["held_out_loss"]) == {"learner", "delivered", "baim"}
    assert all(np.isfinite(v) for v in report["held_out_loss"].values())
    delivered = load_model(run / "cloud" / "baim-finetune-added-discs" / "delivered", "compact")
    assert delivered.task_names == ["discs"] and compact_bytes(delivered) == d["bytes"]


@pytest.mark.integration
def test_a_run_sends_every_edge_its_delivery_and_the_summary_says_so(tmp_path, monkeypatch):
    from dataclasses import replace

    from baim import engines, presets
    from baim.config import RunConfig
    from baim.runfiles import RunFiles

    monkeypatch.setitem(presets.PRESETS, "tiny", replace(presets.get_preset("smoke"), name="tiny"))
    summary = engines.run(tmp_path, RunConfig(preset="tiny", strategies=("finetune",)))
    files = RunFiles(tmp_path)
    for e in summary["edges"]:
        d, sent = e["delivery"], e["bytes"]
        assert d["candidate"] in CANDIDATES and d["reason"] and d["within_budget"]
        assert d["bytes"] <= d["budget_bytes"] and d["val_loss"] <= d["upload_val_loss"]
        assert e["bytes"]["up"] == files.upload(e["edge"]).stat().st_size
        assert d["bytes"] < sent["down"] < d["bytes"] + 64_000  # the weights and their manifest
        deployed = load_model(files.edge(e["edge"], "deployed"), "compact")
        assert compact_bytes(deployed) == d["bytes"]
    assert summary["bytes"]["download"] == sum(e["bytes"]["down"] for e in summary["edges"])


def test_the_edge_choice_sends_the_best_other_candidate_even_when_the_upload_wins(setup, monkeypatch):
    """delivery_choice "edge": the upload is not offered back (the edge has it); the best other
    candidate goes down, for the edge to judge after personalising it."""
    model, learners = setup
    deliveries = Deliveries(model, COMMON, RECIPE)
    broken = lossless_compact(model, 0)
    with torch.no_grad():
        for l in broken.squad(0):
            broken.learner(l).image_head.bias.fill_(-20.0)
    deliveries._lossless[0] = broken
    monkeypatch.setattr(Deliveries, "_distilled", lambda self, task, upload: broken_learner(upload))
    d = deliveries.deliver(0, 0, learners[0], 10**9, VAL, choice="edge")
    others = {c: v["val_loss"] for c, v in d.candidates.items() if c != "upload" and v.get("fits")}
    assert d.candidate == min(others, key=others.get) and d.val_loss > d.upload_val_loss
    assert "keeps it only if it then beats its upload" in d.reason
    # nothing fits: the upload, as under the cloud's choice
    tiny = deliveries.deliver(3, 1, learners[3], 1000, VAL, choice="edge")
    assert tiny.candidate == "upload" and "no candidate fits" in tiny.reason


@pytest.mark.integration
def test_under_the_edge_choice_an_edge_serves_the_better_of_personalised_and_upload(tmp_path, monkeypatch):
    from dataclasses import replace

    from baim import engines, presets
    from baim.config import RunConfig
    from baim.data import to_float
    from baim.edge import node
    from baim.runfiles import RunFiles
    from baim.runview import Run

    smoke = presets.get_preset("smoke")
    monkeypatch.setitem(presets.PRESETS, "tiny", replace(smoke, name="tiny", delivery_choice="edge"))
    real, calls = node.personalize, []

    def personalize_breaking_the_first(compact, *args, **kwargs):
        log = real(compact, *args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # the first edge's personalisation goes wrong: every weight zero
            with torch.no_grad():
                for p in compact.parameters():
                    p.zero_()
        return log

    monkeypatch.setattr(node, "personalize", personalize_breaking_the_first)
    summary = engines.run(tmp_path, RunConfig(preset="tiny", strategies=("finetune",)))
    files, run = RunFiles(tmp_path), Run(tmp_path)
    layout, ds = run.layout, run.dataset()
    edges = summary["edges"]
    assert not summary["missing"]["personalization"]
    assert all(e["delivery"]["candidate"] != "upload" or "fits" in e["delivery"]["reason"] for e in edges)
    for e in edges:
        kept = e["kept"]
        assert kept["kept"] in ("personalised", "upload")
        served = load_model(files.edge(e["edge"], "personalized"), "compact")
        val = ds.train.load(layout.edges[e["edge"]].val)
        loss = reconstruction_metrics(served, val, 0, layout.settings.personalize.kld_weight, seed=0)["test_loss"]
        assert loss == pytest.approx(min(kept["val_loss"].values()), rel=1e-5)  # the better of the two
    first = edges[0]
    assert first["kept"]["kept"] == "upload"  # its broken personalisation was not served
    upload = load_model(files.edge(first["edge"], "initial"), "learner")
    served = load_model(files.edge(first["edge"], "personalized"), "compact")
    x = to_float(ds.train.load(layout.edges[first["edge"]].val[:4]))
    assert torch.allclose(served(x, sample=False).x_hat, upload.decode(upload.encode(x)[0]), atol=1e-6)


def test_delivery_choice_is_checked_and_old_presets_keep_the_clouds():
    from baim.config import Preset
    from baim.presets import get_preset

    with pytest.raises(ConfigError, match="delivery_choice is one of cloud, edge"):
        get_preset("smoke").with_overrides(delivery_choice="both")
    stored = {k: v for k, v in get_preset("quick").to_dict().items() if k != "delivery_choice"}
    assert Preset.from_dict(stored).delivery_choice == "cloud"  # a preset stored before the setting


def test_delivery_trainings_converge_when_the_clouds_recipe_does(setup, monkeypatch):
    """At a converging budget the cut's fine-tune and the distillation stop early on the task's
    common validation images (cap: the recipe's epochs), like the controls' fine-tunes; without
    validation images, their few fixed epochs."""
    from dataclasses import replace

    import baim.cloud.delivery as delivery

    model, learners = setup
    seen = []
    real_fit = delivery.fit

    def spy(student, data, recipe, objective, **kw):
        seen.append((recipe.epochs, recipe.patience, kw.get("validate") is not None))
        return real_fit(student, data, recipe, objective, **kw)

    monkeypatch.setattr(delivery, "fit", spy)
    converging = replace(RECIPE, epochs=4, patience=1)
    budget = budget_bytes("1.25", compact_bytes(learners[1]))
    d = Deliveries(model, COMMON, converging, common_val={0: VAL, 1: VAL}).deliver(1, 0, learners[1], budget, VAL)
    assert seen == [(4, 1, True)]  # the distillation: early stopping on validation, capped at 4
    cut = d.candidates["budgeted"]
    assert 1 <= len(cut["finetune_loss"]) <= 4, cut
    seen.clear()
    fixed = Deliveries(model, COMMON, converging).deliver(1, 0, learners[1], budget, VAL)  # no validation images
    assert seen == [(delivery.DISTILL_EPOCHS, 0, False)]
    cut = fixed.candidates["budgeted"]
    assert len(cut["finetune_loss"]) == delivery.FINETUNE_EPOCHS, cut


def test_an_edge_without_an_accepted_upload_gets_the_lossless_model_scored_on_its_validation(setup, monkeypatch):
    """No upload to set a budget by: the lossless model, no choice; but its validation loss is
    recorded like every other edge's, so that what edges were sent can be compared (baim tune)."""
    from types import SimpleNamespace

    import baim.cloud.delivery as delivery

    model, _ = setup
    images, tasks = np.concatenate([COMMON[0], COMMON[1]]), np.repeat([0, 1], 24)
    monkeypatch.setattr(delivery, "common_data", lambda layout, ds, val=False: (images, tasks))
    settings = SimpleNamespace(cloud=RECIPE, download_budget="1.25", delivery_choice="cloud")
    edges = [SimpleNamespace(task=t, val=[0]) for t in TASKS]
    layout = SimpleNamespace(tasks=[{}, {}], edges=edges, task_names=["a", "b"], settings=settings)
    ds = SimpleNamespace(train=SimpleNamespace(load=lambda ids: VAL if ids else VAL[:0]))
    d = delivery.deliver_all(layout, ds, model, {}, [1])[1]
    assert d.candidate == "lossless" and d.budget_bytes is None and d.upload_val_loss is None
    assert d.val_loss == pytest.approx(_loss(lossless_compact(model, 0)))
    edges[1].val = []  # no validation part: nothing to score on
    assert delivery.deliver_all(layout, ds, model, {}, [1])[1].val_loss is None
