"""Uploads are validated before use: broken or hostile ones are rejected or quarantined."""

import numpy as np
import pytest
import torch

from baim.cloud.screening import screen_uploads, validate_upload
from baim.errors import MessageError
from baim.learners import StagedVAE, tier_spec
from baim.transport import Message, decode, encode

TASKS = ["a", "b"]


def _upload(model: StagedVAE, task="a", samples=100, test_loss=0.05, **meta) -> bytes:
    m = {
        "edge": 0,
        "task": task,
        "samples": samples,
        "spec": model.spec.to_dict(),
        "metrics": {"test_loss": test_loss},
    } | meta
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
        (lambda m: _upload(m, samples=True), "sample count"),
        (lambda m: _upload(m, metrics={}), "test loss"),
        (lambda m: _upload(m, test_loss=float("nan")), "test loss"),
        (lambda m: _upload(m, spec={"image_size": 32}), "missing"),
        (lambda m: _upload(m, spec=tier_spec("small", 64, 1).to_dict()), "images"),
        (lambda m: _upload(m, spec=tier_spec("large").to_dict()), "shape|match"),
        (
            lambda m: encode(
                Message(
                    "upload",
                    {"task": "a", "samples": 1, "spec": m.spec.to_dict(), "metrics": {"test_loss": 1.0}},
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
    data = encode(Message("upload", {"task": "a", "samples": 1, "spec": big, "metrics": {"test_loss": 1.0}}))
    with pytest.raises(ValueError, match="over the limit"):
        validate_upload(data, TASKS, 32, 1)


def test_nan_weights_rejected():
    model = StagedVAE(tier_spec("small"))
    with torch.no_grad():
        model.latent_in.weight[0, 0] = float("inf")
    with pytest.raises(Exception, match="NaN or infinite"):
        validate_upload(_upload(model), TASKS, 32, 1)


def test_absurd_sample_counts_rejected():
    model = StagedVAE(tier_spec("small"))
    with pytest.raises(MessageError, match="training split holds"):
        validate_upload(_upload(model, samples=10**9), TASKS, 32, 1, max_samples=60_000)
    res = screen_uploads({0: _upload(model, samples=5000)}, TASKS, {}, 32, 1, assigned={0: 500})
    assert "this edge was given 500" in res.rejected[0]["reason"]


@pytest.fixture(scope="module")
def trained(fmnist):
    """Two honest learners per task family (tops, footwear), one undertrained, and common data."""
    from baim.config import Recipe
    from baim.edge import train_learner
    from baim.models import reconstruction_metrics

    labels = np.asarray(fmnist.train.labels)
    data = {
        t: fmnist.train.load(np.flatnonzero(np.isin(labels, c))[:700])
        for t, c in enumerate([[0, 2, 3, 4, 6], [5, 7, 9]])
    }
    common = {t: imgs[500:] for t, imgs in data.items()}
    out = {}
    for name, t, epochs, n in (("a0", 0, 4, 500), ("a1", 0, 2, 500), ("b0", 1, 4, 500)):
        torch.manual_seed(len(out))
        m = StagedVAE(tier_spec("small"))
        train_learner(m, data[t][:n], Recipe(epochs=epochs, seed=len(out)))
        out[name] = (m.eval(), reconstruction_metrics(m, common[t])["test_loss"])
    return out, common


def _up(trained, name, task, **kw) -> bytes:
    model, loss = trained[0][name]
    return _upload(model, task=task, test_loss=kw.pop("test_loss", loss), **kw)


def test_screening_keeps_honest_and_undertrained_quarantines_boosted(trained):
    models, common = trained
    boosted = StagedVAE(tier_spec("small"))
    boosted.load_state_dict(models["a0"][0].state_dict())
    with torch.no_grad():  # a "model poisoning" upload: weights scaled
        for p in boosted.decoder_stages.parameters():
            p.mul_(-3.0)
    uploads = {
        0: _up(trained, "a0", "a"),
        1: _up(trained, "a1", "a"),  # 2 epochs: undertrained, honest
        2: _upload(boosted.eval(), test_loss=models["a0"][1]),
        3: b"broken",
        4: _up(trained, "b0", "b"),
    }
    res = screen_uploads(uploads, TASKS, common, 32, 1)
    assert sorted(res.accepted) == [0, 1, 4], res.report()
    assert [r["edge"] for r in res.rejected] == [3] and "magic" in res.rejected[0]["reason"]
    assert [q["edge"] for q in res.quarantined] == [2]
    rep = res.report()
    assert set(rep["scores"]) == {"0", "1", "2", "4"} and set(rep["features"]["0"]) >= {"norm_ratio", "trigger_rate"}


def test_screening_catches_untrained_mislabelled_liars_and_copies(trained):
    models, common = trained
    torch.manual_seed(9)
    random = StagedVAE(tier_spec("small")).eval()
    noisy = StagedVAE(tier_spec("small"))
    noisy.load_state_dict(
        {
            k: v + 0.01 * v.std() * torch.randn(v.shape) if v.is_floating_point() and v.numel() > 1 else v
            for k, v in models["a0"][0].state_dict().items()
        }
    )
    uploads = {
        0: _up(trained, "a0", "a"),
        2: _upload(random, test_loss=models["a0"][1]),  # random weights
        3: _up(trained, "b0", "a", test_loss=0.5),  # footwear labelled as tops (true-ish loss claimed)
        4: _up(trained, "a1", "a", test_loss=models["a0"][1] / 3),  # claims a loss it does not have
        5: _up(trained, "a0", "a"),  # exact duplicate of 0
        6: _upload(noisy.eval(), test_loss=models["a0"][1]),  # noisy copy of 0
    }
    res = screen_uploads(uploads, TASKS, common, 32, 1)
    why = {r["edge"]: r["reason"] for r in res.rejected + res.quarantined}
    assert sorted(res.accepted) == [0], res.report()
    assert "duplicate" in why[5] and "near-copy" in why[6]
    assert "BatchNorm" in why[2] and "reports a test loss" in why[4]
    assert "trained on another task" in why[3] or "BatchNorm" in why[3]
    # the other direction: tops labelled as footwear, claiming its true loss on footwear images
    from baim.models import reconstruction_metrics

    tops = models["a1"][0]
    claim = reconstruction_metrics(tops, common[1])["test_loss"]
    res = screen_uploads({0: _upload(tops, task="b", test_loss=claim)}, TASKS, common, 32, 1)
    assert not res.accepted and res.features[0]["fails"], res.report()
    assert {"mislabel", "input_stats"} & set(res.features[0]["fails"]), res.report()


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
