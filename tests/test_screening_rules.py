"""The screening rules' plumbing, on untrained learners (seconds): thresholds from one place,
rules left out on request, every failed rule recorded, and copies found by what a learner
does rather than how its weights are laid out."""

import dataclasses

import numpy as np
import pytest
import torch

from baim.cloud.screening import (
    RULES,
    THRESHOLDS,
    Thresholds,
    functional_distance,
    screen_uploads,
    signature,
    trigger_probe,
)
from baim.learners import StagedVAE, tier_spec
from baim.transport import Message, encode

TASKS = ["a", "b"]


def _upload(model: StagedVAE, task="a", test_loss=0.05) -> bytes:
    meta = {"task": task, "samples": 100, "spec": model.spec.to_dict(), "metrics": {"test_loss": test_loss}}
    return encode(Message("upload", meta, dict(model.state_dict())))


def _permuted(model: StagedVAE, seed: int = 0) -> StagedVAE:
    """Same function, other weights: the first encoder stage's channels permuted."""
    c = model.spec.stage_widths[0]
    p = torch.randperm(c, generator=torch.Generator().manual_seed(seed))
    s = {k: v.clone() for k, v in model.state_dict().items()}
    for k in s:
        if k.startswith("encoder_stages.0.") and s[k].dim() >= 1 and s[k].shape[0] == c:
            s[k] = s[k][p]
    s["encoder_stages.1.0.weight"] = s["encoder_stages.1.0.weight"][:, p]
    out = StagedVAE(model.spec)
    out.load_state_dict(s)
    return out.eval()


@pytest.fixture(scope="module")
def common():
    g = np.random.default_rng(0)
    imgs = np.zeros((40, 1, 32, 32), np.uint8)
    imgs[:, :, 8:24, 10:22] = g.integers(80, 255, (40, 1, 16, 12))  # a "garment" in the middle, dark edges
    return {0: imgs[:20], 1: imgs[20:]}


def test_a_channel_permuted_copy_is_a_functional_copy(common):
    torch.manual_seed(0)
    model = StagedVAE(tier_spec("small")).eval()
    perm = _permuted(model)
    assert not torch.equal(model.encoder_stages[0][0].weight, perm.encoder_stages[0][0].weight)
    x = torch.from_numpy(common[0]).float() / 255
    a, b = signature(model, x), signature(perm, x)
    assert functional_distance(a, b) < 1e-3  # the limit is ~0.17; independent learners are ~0.7+
    res = screen_uploads({0: _upload(model), 1: _upload(perm)}, TASKS, common, 32, 1)
    assert "copy" in res.features[1]["fails"] and "copy" not in res.features[0]["fails"]
    assert res.features[1]["functional_distance"] < 1e-3


def test_thresholds_come_from_one_place_and_rules_can_be_left_out(common):
    torch.manual_seed(1)
    model = StagedVAE(tier_spec("small")).eval()
    data = {0: _upload(model)}
    strict = dataclasses.replace(THRESHOLDS, norm_cap=0.5)
    res = screen_uploads(data, TASKS, common, 32, 1, thresholds=strict)
    assert (
        "norm" in res.features[0]["fails"]
        and "norm" not in screen_uploads(data, TASKS, common, 32, 1).features[0]["fails"]
    )
    everything_off = screen_uploads(data, TASKS, common, 32, 1, thresholds=strict, skip=frozenset(RULES))
    assert list(everything_off.accepted) == [0] and everything_off.features[0]["fails"]
    with pytest.raises(ValueError, match="unknown screening rules"):
        screen_uploads(data, TASKS, common, 32, 1, skip=frozenset({"nope"}))
    assert isinstance(THRESHOLDS, Thresholds)


def test_trigger_probe_needs_a_dark_region():
    torch.manual_seed(2)
    model = StagedVAE(tier_spec("small")).eval()
    bright = torch.ones(8, 1, 32, 32)
    assert trigger_probe(model, bright) == 0.0  # nowhere to hide a bright trigger: nothing to probe


def test_a_learner_short_of_the_skill_gate_is_still_probed():
    """An attacker who keeps its learner just worse than the task's mean image must not escape
    the trigger probe: it meets the (looser) limit for unskilled learners instead of none."""
    from baim.cloud.screening import _verdicts

    th = THRESHOLDS
    base = {
        "loss": 0.05,
        "loss_vs_mean_image": 1.2,
        "best_other_task": "b",
        "best_other_vs_mean_image": 2.0,
        "norm_ratio": 1.0,
        "input_stats_error": 0.0,
        "stats_affinity": 0.0,
        "stats_best_other_task": "b",
        "claimed_loss": 0.05,
        "claim_ratio": 1.0,
        "trigger_rate": None,
    }
    between = (th.trigger_probe + th.trigger_probe_unskilled) / 2
    assert th.trigger_probe < between < th.trigger_probe_unskilled
    assert "trigger" not in _verdicts(base | {"skilled": False, "trigger_probe": between}, "a", th, None)
    assert "trigger" in _verdicts(base | {"skilled": True, "trigger_probe": between}, "a", th, None)
    unskilled = _verdicts(base | {"skilled": False, "trigger_probe": th.trigger_probe_unskilled * 1.5}, "a", th, None)
    assert "trigger" in unskilled and f"limit {th.trigger_probe_unskilled:.3g}" in unskilled["trigger"]


def test_a_copy_of_a_learner_already_in_the_baim_is_a_copy(common):
    """`baim cloud add` offers one learner at a time: the copy rule must also compare it with
    the learners already inside the BAIM, not only with uploads of the same call."""
    torch.manual_seed(2)
    inside = StagedVAE(tier_spec("small")).eval()
    inside.train()  # as a BAIM may hold it: screening must not update its BatchNorm statistics
    before = {k: v.clone() for k, v in inside.state_dict().items()}
    torch.manual_seed(3)
    other = StagedVAE(tier_spec("small")).eval()
    earlier = {"learner 0 of the BAIM": inside}
    only_copy = frozenset(RULES) - {"copy"}  # untrained learners fail other rules too; the reason named is copy's
    res = screen_uploads(
        {0: _upload(_permuted(inside)), 1: _upload(other)}, TASKS, common, 32, 1, earlier=earlier, skip=only_copy
    )
    assert "copy" in res.features[0]["fails"] and "copy" not in res.features[1]["fails"]
    assert any("near-copy of learner 0 of the BAIM" in q["reason"] for q in res.quarantined if q["edge"] == 0)
    assert inside.training and all(torch.equal(before[k], v) for k, v in inside.state_dict().items())
