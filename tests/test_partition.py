"""Lossless partition into compact task models, and their files."""

import json

import pytest
import torch

from baim.cloud import closure, fuse, partition
from baim.errors import ModelFileError
from baim.learners import StagedVAE, tier_spec
from baim.models import BAIM, Connection, load_model, model_from, save_model, to_parts
from conftest import look_trained, trained_learners


def _trained_like_baim(height=2, seed=0):
    learners = trained_learners(["small", "medium", "large", "small", "large"], seed)
    model = look_trained(fuse(learners, [0, 0, 1, 1, 2], ["a", "b", "c"], top_k=2, height=height), 0.2, 0.5)
    model.prune_connections(0.8)  # a sparse, pruned BAIM with cross-task connections
    return model.eval()


def test_partition_matches_baim_for_every_task():
    model = _trained_like_baim()
    cross = [c for c in model.conn_keys.values() if model.learner_tasks[c.src] != model.learner_tasks[c.dst]]
    assert cross, "the test needs cross-task connections"
    x = torch.rand(10, 1, 32, 32)
    for t in range(3):
        compact = partition(model, t)
        noise = torch.randn(10, model.latent_dim)
        tasks = torch.full((10,), t, dtype=torch.long)
        with torch.no_grad():
            a = model(x, tasks, noise=noise).x_hat
            b = compact(x, torch.zeros(10, dtype=torch.long), noise=noise).x_hat
            assert (a - b).abs().max() <= 1e-6
            g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
            assert (model.generate(t, 6, g1) - compact.generate(0, 6, g2)).abs().max() <= 1e-6
        assert compact.num_parameters() < model.num_parameters()


def test_partition_keeps_feeders_only_as_deep_as_read():
    ls = [StagedVAE(tier_spec(t)).eval() for t in ["small", "large", "medium"]]
    model = BAIM.from_learners(
        ls, [0, 1, 2], ["a", "b", "c"], [Connection("dec", 1, 1, 0, 2), Connection("enc", 2, 0, 1, 0)]
    )
    need, active = closure(model, 0)
    assert need["dec"] == {0: 3, 1: 2} and need["enc"] == {0: 3} and len(active) == 1
    compact = partition(model, 0)
    assert len(compact.learners) == 2 and compact.learner_tasks == [0, None]
    feeder = compact.learners[1]
    assert len(feeder.decoder_stages) == 2 and feeder.image_head is None
    assert len(feeder.encoder_stages) == 0 and feeder.posterior_head is None


def test_compact_files_round_trip_and_tampering(tmp_path):
    model = _trained_like_baim()
    compact = partition(model, 1)
    save_model(compact, tmp_path / "c")
    loaded = load_model(tmp_path / "c")
    x, noise = torch.rand(4, 1, 32, 32), torch.randn(4, model.latent_dim)
    with torch.no_grad():
        assert torch.equal(compact(x, noise=noise).x_hat, loaded(x, noise=noise).x_hat)
    # tampered weights: one byte flipped
    w = tmp_path / "c" / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256"):
        load_model(tmp_path / "c")
    # tampered manifest: a connection added that the weights do not hold
    save_model(compact, tmp_path / "d")
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    m["config"]["connections"].append({"side": "dec", "src": 0, "src_stage": 0, "dst": 1, "dst_stage": 0})
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelFileError, match="missing|match"):
        load_model(tmp_path / "d")
    m["format_version"] = 99
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelFileError, match="format"):
        load_model(tmp_path / "d")


def test_deployment_message_round_trip_is_verified():
    compact = partition(_trained_like_baim(), 2)
    manifest, state = to_parts(compact)
    again = model_from(manifest, state, "message", "compact")
    assert again.num_parameters() == compact.num_parameters()
    state = dict(state)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 1e-3  # altered in transit
    with pytest.raises(ModelFileError, match="sha256"):
        model_from(manifest, state, "message", "compact")
    with pytest.raises(ModelFileError, match="expected a learner"):
        model_from(manifest, to_parts(compact)[1], "message", "learner")
