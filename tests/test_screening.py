"""Uploads are validated before use: broken or hostile ones are rejected or quarantined."""

import numpy as np
import pytest
import torch

from baim.cloud.screening import screen_uploads, validate_upload
from baim.errors import MessageError
from baim.learners import StagedVAE, tier_spec
from baim.transport import Message, decode, encode

TASKS = ["a", "b"]


def _upload(model: StagedVAE, task="a", samples=100, **meta) -> bytes:
    m = {"edge": 0, "task": task, "samples": samples, "spec": model.spec.to_dict(), "metrics": {}} | meta
    return encode(Message("upload", m, dict(model.state_dict())))


def test_codec_round_trip_and_garbage():
    msg = Message("upload", {"x": 1}, {"w": torch.arange(6.0).view(2, 3)})
    back = decode(encode(msg))
    assert back.kind == "upload" and back.meta == {"x": 1} and torch.equal(back.tensors["w"], msg.tensors["w"])
    for bad, match in [
        (b"hello", "magic"),
        (b"BAIM\x01\xff\xff\xff\xff{}", "header length"),
        (b"BAIM\x02\x00\x00\x00\x02{}", "version"),
        (b"BAIM\x01\x00\x00\x00\x02{}garbage", "kind and meta|safetensors"),
    ]:
        with pytest.raises(MessageError, match=match):
            decode(bad)
    with pytest.raises(MessageError, match="exceeds"):
        decode(encode(msg), max_bytes=10)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda m: _upload(m, task="zzz"), "task"),
        (lambda m: _upload(m, samples=0), "sample count"),
        (lambda m: _upload(m, spec={"image_size": 32}), "missing"),
        (lambda m: _upload(m, spec=tier_spec("small", 64, 1).to_dict()), "images"),
        (lambda m: _upload(m, spec=tier_spec("large").to_dict()), "shape|match"),
        (
            lambda m: encode(
                Message(
                    "upload",
                    {"task": "a", "samples": 1, "spec": m.spec.to_dict()},
                    {k: v for k, v in list(m.state_dict().items())[1:]},
                )
            ),
            "missing",
        ),
        (lambda m: b"\x00" * 100, "magic"),
        (lambda m: encode(Message("hello", {})), "upload"),
    ],
)
def test_validation_rejects_with_reason(mutate, match):
    model = StagedVAE(tier_spec("small"))
    with pytest.raises(Exception, match=match):
        validate_upload(mutate(model), TASKS, 32, 1)


def test_validation_rejects_oversized_spec():
    big = tier_spec("small").to_dict() | {"stage_widths": [4096, 4096, 4096]}
    data = encode(Message("upload", {"task": "a", "samples": 1, "spec": big}))
    with pytest.raises(ValueError, match="over the limit"):
        validate_upload(data, TASKS, 32, 1)


def test_nan_weights_rejected():
    model = StagedVAE(tier_spec("small"))
    with torch.no_grad():
        model.latent_in.weight[0, 0] = float("inf")
    with pytest.raises(Exception, match="NaN or infinite"):
        validate_upload(_upload(model), TASKS, 32, 1)


def test_screening_quarantines_outliers_and_reports(fmnist):
    from baim.config import Recipe
    from baim.edge import train_learner

    imgs = fmnist.train.load(np.flatnonzero(np.isin(fmnist.train.labels, [5, 7, 9]))[:600])
    good = []
    for seed in range(2):
        torch.manual_seed(seed)
        m = StagedVAE(tier_spec("small"))
        train_learner(m, imgs[:500], Recipe(epochs=5, seed=seed))
        good.append(m)
    poisoned = StagedVAE(tier_spec("small"))
    poisoned.load_state_dict(good[0].state_dict())
    with torch.no_grad():  # a "model poisoning" upload: weights scaled
        for p in poisoned.decoder_stages.parameters():
            p.mul_(-3.0)
    uploads = {0: _upload(good[0]), 1: _upload(good[1]), 2: _upload(poisoned), 3: b"broken"}
    res = screen_uploads(uploads, TASKS, {0: imgs[500:]}, 32, 1)
    assert sorted(res.accepted) == [0, 1]
    assert [r["edge"] for r in res.rejected] == [3] and "magic" in res.rejected[0]["reason"]
    assert [q["edge"] for q in res.quarantined] == [2]
    rep = res.report()
    assert set(rep["scores"]) == {"0", "1", "2"}


def test_in_process_edge_failure_is_an_error_reply_like_flower():
    """An exception inside an edge is that edge's problem: the transport answers with an
    ``error`` message naming it (as Flower does), and counts no reply bytes."""
    from baim.transport import ByteLedger, InProcessTransport

    class Broken:
        def handle(self, msg):
            raise RuntimeError("disk full")

    ledger = ByteLedger()
    reply = InProcessTransport({0: Broken()}, ledger).request(0, Message("train.local"), 1.0, "upload")
    assert reply.kind == "error" and "edge 0 failed: RuntimeError: disk full" in reply.meta["error"]
    assert [m["direction"] for m in ledger.messages] == ["down"]
