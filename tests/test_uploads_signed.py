"""Uploads are attributable: each edge signs its upload; the cloud refuses unsigned uploads,
wrong signatures, replays and uploads claiming another edge's identity, each with its reason."""

import hashlib

import pytest
import torch

from baim.cloud.screening import screen_uploads
from baim.cloud.uploads import Expected, authenticate
from baim.errors import MessageError
from baim.learners import StagedVAE, tier_spec, weights_bytes
from baim.signing import new_key, public_bytes, sign_document, verify_document
from baim.transport import Message, decode, encode

TASKS = ["a", "b"]
RUN = "run-1"


def _model(seed: int = 0) -> StagedVAE:
    torch.manual_seed(seed)
    return StagedVAE(tier_spec("small")).eval()


def _signed(model, key, edge=0, run=RUN, nonce="n0", **meta) -> bytes:
    header = {
        "edge": edge,
        "task": "a",
        "samples": 100,
        "spec": model.spec.to_dict(),
        "metrics": {"test_loss": 0.05},
        "auth": {"run": run, "nonce": nonce, "weights_sha256": hashlib.sha256(weights_bytes(model)).hexdigest()},
    } | meta
    return encode(Message("upload", sign_document(key, header), dict(model.state_dict())))


def _refusal(data: bytes, edge: int, expected: Expected | None) -> str:
    msg = decode(data)
    with pytest.raises(MessageError) as info:
        authenticate(edge, msg, expected, hashlib.sha256(weights_bytes(_load(msg))).hexdigest())
    return str(info.value)


def _load(msg):
    m = StagedVAE(tier_spec("small"))
    m.load_state_dict(msg.tensors)
    return m


@pytest.fixture
def keys():
    return {0: new_key(), 1: new_key()}


def _expected(keys, edge=0, nonce="n0", run=RUN):
    return Expected(public_key=public_bytes(keys[edge]).hex(), run=run, nonce=nonce)


def test_sign_document_round_trip():
    key = new_key()
    doc = sign_document(key, {"b": 1, "a": [1, 2]})
    assert verify_document(public_bytes(key), doc)
    assert not verify_document(public_bytes(key), doc | {"b": 2})
    assert not verify_document(public_bytes(new_key()), doc)
    assert not verify_document(public_bytes(key), {"b": 1, "a": [1, 2]})
    assert not verify_document(public_bytes(key), doc | {"signature": "zz"})


def test_a_good_signature_passes(keys):
    model = _model()
    msg = decode(_signed(model, keys[0]))
    authenticate(0, msg, _expected(keys), hashlib.sha256(weights_bytes(model)).hexdigest())


def test_unsigned_upload_refused(keys):
    model = _model()
    meta = {"edge": 0, "task": "a", "samples": 100, "spec": model.spec.to_dict(), "metrics": {"test_loss": 0.05}}
    data = encode(Message("upload", meta, dict(model.state_dict())))
    assert "unsigned upload" in _refusal(data, 0, _expected(keys))


def test_unregistered_edge_refused(keys):
    assert "not registered" in _refusal(_signed(_model(), keys[0]), 0, None)


def test_wrong_signature_refused(keys):
    model = _model()
    # signed by edge 1's key but sent as edge 0: edge 0's registered key does not verify it
    assert "wrong signature" in _refusal(_signed(model, keys[1], edge=0), 0, _expected(keys))
    # altered after signing (a bigger sample count)
    msg = decode(_signed(model, keys[0]))
    msg.meta["samples"] = 10**6
    assert "wrong signature" in _refusal(encode(msg), 0, _expected(keys))


def test_identity_mismatch_refused(keys):
    # edge 1, with its own key, sends an upload naming edge 0 (arrives as edge 1's reply)
    data = _signed(_model(), keys[1], edge=0)
    assert "identity mismatch" in _refusal(data, 1, _expected(keys, edge=1))


def test_replays_refused(keys):
    model = _model()
    old_round = _signed(model, keys[0], nonce="old")
    assert "replay" in _refusal(old_round, 0, _expected(keys, nonce="new"))
    other_run = _signed(model, keys[0], run="run-0")
    assert "replay" in _refusal(other_run, 0, _expected(keys))


def test_swapped_weights_refused(keys):
    model, other = _model(0), _model(1)
    msg = decode(_signed(model, keys[0]))
    msg.tensors = dict(other.state_dict())  # header and signature kept, weights swapped
    assert "not the ones its signature covers" in _refusal(encode(msg), 0, _expected(keys))


def test_screening_records_each_refusal(keys):
    """Through screen_uploads: every refusal lands in ``rejected`` with its reason."""
    model = _model()
    exp = {e: _expected(keys, edge=e, nonce=f"n{e}") for e in (0, 1)}
    uploads = {0: _signed(model, keys[1], edge=0, nonce="n0"), 1: _signed(_model(2), keys[1], edge=1, nonce="old")}
    res = screen_uploads(uploads, TASKS, {}, 32, 1, expected=exp)
    reasons = {r["edge"]: r["reason"] for r in res.rejected}
    assert "wrong signature" in reasons[0] and "replay" in reasons[1] and not res.accepted


def test_edge_node_signs_and_workflow_registers(tmp_path, fmnist):
    """An edge node's info carries its public key and its upload verifies against it, for the
    run and nonce of the request it answered; its key survives a restart."""
    from baim.config import get_preset
    from baim.data.layout import make_layout
    from baim.edge import EdgeNode
    from baim.signing import public_from_hex

    preset = get_preset("smoke")
    layout = make_layout(fmnist, preset, seed=0)
    node = EdgeNode(0, layout, fmnist, tmp_path / "edge-0")
    info = node.handle(Message("query.info"))
    key = info.meta["public_key"]
    assert public_from_hex(key) and (tmp_path / "edge-0" / "identity.pem").is_file()
    assert EdgeNode(0, layout, fmnist, tmp_path / "edge-0").handle(Message("query.info")).meta["public_key"] == key
    reply = node.handle(Message("train.local", {"run": RUN, "nonce": "abc", "epochs": 1}))
    assert reply.kind == "upload"
    model = _load(reply)
    authenticate(0, reply, Expected(key, RUN, "abc"), hashlib.sha256(weights_bytes(model)).hexdigest())
    with pytest.raises(MessageError, match="replay"):
        authenticate(0, reply, Expected(key, RUN, "xyz"), hashlib.sha256(weights_bytes(model)).hexdigest())
