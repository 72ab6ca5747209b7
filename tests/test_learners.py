import json

import pytest
import torch

from baim.errors import ModelFileError, SpecError
from baim.learners import TIERS, LearnerSpec, StagedVAE, tier_spec
from baim.models import load_model, save_model


def test_tiers_really_differ():
    specs = [tier_spec(t) for t in TIERS]
    assert len({s.num_stages for s in specs}) >= 2
    assert len({s.latent_dim for s in specs}) == 3
    assert len({s.stage_widths for s in specs}) == 3


@pytest.mark.parametrize("tier", sorted(TIERS))
@pytest.mark.parametrize("channels,size", [(1, 32), (3, 64)])
@torch.no_grad()
def test_shapes_per_stage(tier, channels, size):
    m = StagedVAE(tier_spec(tier, size, channels))
    x = torch.rand(2, channels, size, size)
    h = x
    for stage, (c, side) in zip(m.encoder_stages, m.encoder_shapes()):
        h = stage(h)
        assert h.shape == (2, c, side, side)
    mu, logvar = m.posterior(h)
    assert mu.shape == (2, m.spec.latent_dim)
    h = m.latent_to_map(mu)
    for stage, (c, side) in zip(m.decoder_stages, m.decoder_shapes()):
        h = stage(h)
        assert h.shape == (2, c, side, side)
    out = m.to_image(h)
    assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"channels": 2}, "channels"),
        ({"image_size": 30}, "image_size"),
        ({"stage_widths": []}, "stage_widths"),
        ({"stage_widths": [16, -1]}, "stage_widths"),
        ({"stage_widths": [8] * 6}, "stages halve"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"family": "gan"}, "family"),
    ],
)
def test_spec_validation_errors(bad, match):
    d = tier_spec("small").to_dict() | bad
    with pytest.raises(SpecError, match=match):
        LearnerSpec.from_dict(d)


def test_spec_unknown_and_missing_fields():
    d = tier_spec("small").to_dict()
    with pytest.raises(SpecError, match="unknown fields.*colour"):
        LearnerSpec.from_dict(d | {"colour": "red"})
    d.pop("latent_dim")
    with pytest.raises(SpecError, match="missing.*latent_dim"):
        LearnerSpec.from_dict(d)


def test_save_load_round_trip_exact(tmp_path):
    torch.manual_seed(0)
    m = StagedVAE(tier_spec("large"))
    m.train()
    m(torch.rand(8, 1, 32, 32))  # move BatchNorm running statistics off their defaults
    m.eval()
    save_model(m, tmp_path / "l")
    m2 = load_model(tmp_path / "l")
    assert m2.spec == m.spec
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    x, noise = torch.rand(4, 1, 32, 32), torch.randn(4, m.spec.latent_dim)
    assert torch.equal(m(x, noise)[0], m2(x, noise)[0])
    assert not list(tmp_path.glob("l/*.tmp"))


def test_load_rejects_bad_files(tmp_path):
    m = StagedVAE(tier_spec("small"))
    save_model(m, tmp_path / "l")
    manifest_path = tmp_path / "l" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    # spec that no longer matches the weights
    manifest_path.write_text(json.dumps(manifest | {"config": tier_spec("medium").to_dict()}))
    with pytest.raises(ModelFileError, match="shape"):
        load_model(tmp_path / "l")
    # a manifest of another kind, or none at all (an interrupted save)
    manifest_path.write_text(json.dumps(manifest | {"kind": "compact"}))
    with pytest.raises(ModelFileError, match="expected a learner"):
        load_model(tmp_path / "l", "learner")
    manifest_path.unlink()
    with pytest.raises(ModelFileError, match="incomplete"):
        load_model(tmp_path / "l")
    # garbage weights
    manifest_path.write_text(json.dumps(manifest))
    (tmp_path / "l" / "weights.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ModelFileError, match="safetensors"):
        load_model(tmp_path / "l")


def test_load_rejects_non_finite(tmp_path):
    m = StagedVAE(tier_spec("small"))
    with torch.no_grad():
        m.image_head.weight[0, 0, 0, 0] = float("nan")
    save_model(m, tmp_path / "l")
    with pytest.raises(ModelFileError, match="NaN"):
        load_model(tmp_path / "l")
