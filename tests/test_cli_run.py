"""The command line and the resumable run directory on a tiny preset."""

import json
from dataclasses import replace

import pytest

from baim import config, presets
from baim.cli import main
from baim.config import RunConfig
from baim.errors import RunConfigMismatch
from baim.rundir import RunDir


@pytest.fixture
def tiny_preset(monkeypatch):
    tiny = replace(presets.get_preset("smoke"), name="tiny")
    monkeypatch.setitem(presets.PRESETS, "tiny", tiny)
    return tiny


def test_layout_command_prints_table(tmp_path, capsys):
    assert main(["layout", "--preset", "quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "edge" in out and "tops" in out and ("Sneaker" in out or "Sandal" in out)
    layout = json.loads((tmp_path / "layout.json").read_text())
    assert len(layout["edges"]) == presets.get_preset("quick").num_edges
    assert layout["preset"]["edge"]["lr"] == 0.005  # the whole preset travels with the layout


def test_cli_version_and_bad_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and "baim 0." in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--preset", "nope", "--out", "x"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["layout", "--out", str(tmp_path), "--data-dir", str(tmp_path / "nope")]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().out


def test_edge_train_and_evaluate_commands(tmp_path, tiny_preset, capsys):
    assert main(["layout", "--preset", "tiny", "--out", str(tmp_path)]) == 0
    assert (
        main(["edge", "train", "--layout", str(tmp_path / "layout.json"), "--edge", "0", "--out", str(tmp_path / "e0")])
        == 0
    )
    assert (tmp_path / "e0" / "manifest.json").is_file()
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path / "e0"),
                "--layout",
                str(tmp_path / "layout.json"),
                "--task",
                "0",
                "--fid-count",
                "16",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["fid_count"] == 16 and res["fid_extractor"] == "domain" and res["test_loss"] > 0
    assert res["fid_standard"] > 0 and res["kid_reconstruction"] == res["kid_reconstruction"]


def test_run_resumes_without_redoing_phases(tmp_path, tiny_preset, monkeypatch):
    from baim import engines
    from baim.edge import node

    calls = {"n": 0}
    real_train = node.train_edge

    def counting(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed while training the second edge
        return real_train(*a, **k)

    monkeypatch.setattr(node, "train_edge", counting)
    cfg = RunConfig(preset="tiny", strategies=("finetune",))
    with pytest.raises(KeyboardInterrupt):
        engines.run(tmp_path, cfg)
    assert (tmp_path / "edges" / "edge-0" / "initial" / "manifest.json").is_file()
    assert not (tmp_path / "state" / "upload.json").exists()
    calls["n"] = 10  # no more interruptions
    summary = engines.run(tmp_path, cfg)
    assert calls["n"] == 12  # edges 1 and 2 only; edge 0 was kept
    assert len(summary["edges"]) == 3 and (tmp_path / "figures" / "samples_initial.png").is_file()
    assert summary["bytes"]["upload"] > 0 and "finetune" in summary["strategies"]
    calls["n"] = 100
    engines.run(tmp_path, cfg)
    assert calls["n"] == 100  # everything finished: nothing is redone
    # every image behind every FID is kept, and the number can be recomputed from them
    import numpy as np

    from baim.metrics import fid

    img = tmp_path / "images"
    task = summary["edges"][0]["task"]
    real, base = np.load(img / "real" / f"{task}.npy"), np.load(img / "real" / f"{task}_baseline.npy")
    models = summary["edges"][0]["models"]
    for which in ("initial", "deployed", "personalized"):
        for procedure in ("fitted", "standard", "reconstruction"):
            again = fid(real, np.load(img / "edge-0" / f"{which}_{procedure}.npy"), base)
            assert again.fid == pytest.approx(models[which][f"fid_{procedure}"], rel=1e-6)
            assert again.kid == pytest.approx(models[which][f"kid_{procedure}"], rel=1e-6, abs=1e-9)
    per_task = summary["strategies"]["finetune"]["per_task"][task]
    for procedure in ("fitted", "standard", "reconstruction"):
        again = fid(real, np.load(img / "baim-finetune" / f"{task}_{procedure}.npy"), base).fid
        assert again == pytest.approx(per_task[f"fid_{procedure}"], rel=1e-6)
    assert (tmp_path / "report.html").stat().st_size > 10_000


def test_a_run_without_the_clouds_own_scoring_scores_only_what_edges_serve(tmp_path, tiny_preset, monkeypatch):
    """``cloud_evaluation`` off (a study's runs): the BAIM is never scored, yet the summary
    keeps each task's real-vs-real floor (from the edges' scores of the same real images) and
    the report is written, saying the BAIM was not scored."""
    from baim import engines
    from baim.cloud import pipeline

    def refuse(*a, **k):
        raise AssertionError("the BAIM was scored with cloud_evaluation off")

    monkeypatch.setattr(pipeline, "evaluate_tasks", refuse)
    monkeypatch.setattr("baim.workflow.context.evaluate_tasks", refuse)
    cfg = RunConfig(preset="tiny", strategies=("finetune",), overrides={"cloud_evaluation": False})
    summary = engines.run(tmp_path, cfg)
    trained = summary["strategies"]["finetune"]
    assert (trained["per_task"], trained["step0"], trained["final_test_loss"]) == ({}, {}, None)
    for e in summary["edges"]:
        floor = summary["real_vs_real"][e["task"]]
        assert floor["fid"] == e["models"]["initial"]["fid_real_vs_real"] > 0
    assert summary["fid_count"] == summary["edges"][0]["models"]["initial"]["fid_count"]
    assert not (tmp_path / "images" / "baim-finetune").exists()
    assert "not scored" in (tmp_path / "report.html").read_text()


def test_run_dir_refuses_other_config(tmp_path):
    RunDir(tmp_path, {"preset": "quick"})
    with pytest.raises(RunConfigMismatch, match="preset"):
        RunDir(tmp_path, {"preset": "paper"})


def test_cloud_train_command_from_edge_folders(tmp_path, tiny_preset, capsys):
    layout = tmp_path / "layout.json"
    assert main(["layout", "--preset", "tiny", "--out", str(tmp_path)]) == 0
    for e in range(3):
        assert (
            main(
                [
                    "edge",
                    "train",
                    "--layout",
                    str(layout),
                    "--edge",
                    str(e),
                    "--out",
                    str(tmp_path / "uploads" / f"edge-{e}"),
                ]
            )
            == 0
        )
    # a broken upload beside them is rejected, not fused
    (tmp_path / "uploads" / "junk.msg").write_bytes(b"not a message")
    capsys.readouterr()
    assert (
        main(
            [
                "cloud",
                "train",
                "--layout",
                str(layout),
                "--uploads",
                str(tmp_path / "uploads"),
                "--strategy",
                "freeze",
                "--out",
                str(tmp_path / "baim"),
                "--epochs",
                "1",
                "--accept-unsigned",  # saved edge folders carry no signature
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "not fused" in out and "magic" in out
    res = json.loads(out[out.index("{") :])
    assert res["strategy"] == "freeze" and set(res["fid_fitted"]) == {"tops", "footwear", "trousers_bags"}
    from baim.models import load_model

    model = load_model(tmp_path / "baim", "baim")
    assert len(model.learners) == 3 and model.frozen_learners == {0, 1, 2}
    screening = json.loads((tmp_path / "baim" / "screening.json").read_text())
    assert screening["accepted"] == [1, 2, 3] and screening["rejected"][0]["edge"] == 0
    assert screening["unverified"] == [1, 2, 3] and screening["waivers"]["accept_unsigned"]


def test_sweep_needs_two_seeds_and_extractor_follows_the_data(tmp_path, capsys):
    from baim.config import default_extractor

    assert main(["sweep", "--seeds", "0", "--out", str(tmp_path / "s")]) == 2
    assert "at least two distinct seeds" in capsys.readouterr().out
    assert main(["sweep", "--seeds", "0,x", "--out", str(tmp_path / "s")]) == 2
    assert "comma-separated integers" in capsys.readouterr().out
    assert not (tmp_path / "s").exists()  # nothing claimed before the arguments are known to be good
    assert default_extractor("fashion-mnist") == "domain"
    assert default_extractor("celeba") == default_extractor("image-folder") == "lite0"


def test_bad_settings_are_refused_before_anything_is_written(tmp_path):
    from baim.errors import ConfigError

    with pytest.raises(ConfigError, match="cloud recipe"):
        RunConfig(cloud_recipe="fast")
    with pytest.raises(ConfigError, match="FID extractor"):
        RunConfig(fid_extractor="vgg")
    with pytest.raises(ConfigError, match="recipe"):
        config.Recipe(epochs=-1)
