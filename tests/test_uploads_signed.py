"""Uploads are attributable: each edge signs its upload; the cloud refuses unsigned uploads,
wrong signatures, replays and uploads claiming another edge's identity, each with its reason."""

import hashlib

import numpy as np
import pytest
import torch

from baim.cloud.door import Waivers, admit
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


def test_the_door_records_each_refusal(keys):
    """Through the door: every refusal lands in ``rejected`` with its reason."""
    model = _model()
    exp = {e: _expected(keys, edge=e, nonce=f"n{e}") for e in (0, 1)}
    uploads = {0: _signed(model, keys[1], edge=0, nonce="n0"), 1: _signed(_model(2), keys[1], edge=1, nonce="old")}
    res = admit(uploads, TASKS, {}, 32, 1, expected=exp)
    reasons = {r["edge"]: r["reason"] for r in res.rejected}
    assert "wrong signature" in reasons[0] and "replay" in reasons[1] and not res.accepted


def test_edge_node_signs_and_workflow_registers(tmp_path, fmnist):
    """An edge node's info carries its public key and its upload verifies against it, for the
    run and nonce of the request it answered; its key survives a restart."""
    from baim.data.layout import make_layout
    from baim.edge import EdgeNode
    from baim.presets import get_preset
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


def _common():
    """Stand-in common images of both tasks (dim noise and bright noise)."""
    rng = np.random.default_rng(0)
    return {t: (rng.random((64, 1, 32, 32)) * (80 + 175 * t)).astype(np.uint8) for t in (0, 1)}


def _unsigned(model, edge=0) -> bytes:
    meta = {"edge": edge, "task": "a", "samples": 100, "spec": model.spec.to_dict(), "metrics": {"test_loss": 0.05}}
    return encode(Message("upload", meta, dict(model.state_dict())))


def test_the_door_refuses_unsigned_learners_unless_the_operator_accepts_them(keys):
    """Read from disk (no round): unsigned is refused; with the waiver it enters, recorded as unverified."""
    data = {0: _unsigned(_model())}
    refused = admit(data, TASKS, _common(), 32, 1, keys={0: public_bytes(keys[0]).hex()})
    assert not refused.accepted and "unsigned" in refused.rejected[0]["reason"]
    assert "--accept-unsigned" in refused.rejected[0]["reason"]
    waived = admit(data, TASKS, _common(), 32, 1, waivers=Waivers(accept_unsigned=True, skip_screening=True))
    report = waived.report()
    assert 0 in waived.accepted and report["unverified"] == [0] and report["identity"] == {"0": "unsigned"}
    assert report["waivers"] == {"accept_unsigned": True, "skip_screening": True}


def test_the_door_checks_offline_signatures_against_the_operators_keys(keys):
    """An upload read from disk is attributed to the edge its signed header names and must verify
    with the key the operator registered for that edge."""
    registered = {e: public_bytes(k).hex() for e, k in keys.items()}
    trusted = Waivers(skip_screening=True)  # random weights: only the identity is under test here
    good = admit({0: _signed(_model(), keys[0], edge=0)}, TASKS, _common(), 32, 1, keys=registered, waivers=trusted)
    assert 0 in good.accepted and good.report()["identity"] == {"0": "signed"} and good.report()["unverified"] == []
    # edge 1's key, credited to edge 0; and a signature by an edge nobody registered
    forged = admit({0: _signed(_model(), keys[1], edge=0)}, TASKS, _common(), 32, 1, keys=registered)
    assert not forged.accepted and "wrong signature" in forged.rejected[0]["reason"]
    stranger = admit({0: _signed(_model(), new_key(), edge=7)}, TASKS, _common(), 32, 1, keys=registered)
    assert not stranger.accepted and "no key registered" in stranger.rejected[0]["reason"]
    # the waiver for unsigned learners does not let a bad signature through
    waived = admit(
        {0: _signed(_model(), keys[1], edge=0)},
        TASKS,
        {},
        32,
        1,
        keys=registered,
        waivers=Waivers(accept_unsigned=True, skip_screening=True),
    )
    assert not waived.accepted


def test_the_door_screens_unless_the_operator_skips_it(keys):
    """A random-weights learner never saw its task's images: screening quarantines it; skipping
    screening lets it in, recorded as unscreened, with what it would have failed."""
    common = _common()
    data = {0: _signed(_model(), keys[0], edge=0)}
    registered = {0: public_bytes(keys[0]).hex()}
    screened = admit(data, TASKS, common, 32, 1, keys=registered)
    assert not screened.accepted and screened.quarantined
    skipped = admit(data, TASKS, common, 32, 1, keys=registered, waivers=Waivers(skip_screening=True))
    report = skipped.report()
    assert 0 in skipped.accepted and report["unscreened"] == [0] and report["features"]["0"]["fails"]


def _cli(*args):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "baim.cli", *map(str, args)], capture_output=True, text=True, timeout=600)
    r.said = " ".join((r.stdout + r.stderr).split())
    return r


@pytest.mark.integration
def test_cloud_train_refuses_unsigned_and_misattributed_uploads(tmp_path, fmnist, keys):
    """`baim cloud train` goes through the door: an unsigned saved learner and an upload signed
    by edge 1 but credited to edge 0 are refused before any training, each with its reason."""
    import json

    from baim.data.layout import make_layout
    from baim.models import save_model
    from baim.presets import get_preset
    from baim.signing import write_edge_keys

    layout = make_layout(fmnist, get_preset("smoke"), seed=0)
    layout.save(tmp_path / "layout.json")
    ups = tmp_path / "uploads"
    save_model(
        _model(), ups / "edge-3", {"metrics.json": json.dumps({"task": "tops", "samples": 10, "test_loss": 0.1})}
    )
    (ups / "edge-0.msg").write_bytes(_signed(_model(1), keys[1], edge=0, task="tops"))
    write_edge_keys(tmp_path / "edge_keys.json", {e: public_bytes(k).hex() for e, k in keys.items()})
    out = tmp_path / "out"
    args = ["cloud", "train", "--layout", tmp_path / "layout.json", "--uploads", ups, "--out", out, "--epochs", 1]
    r = _cli(*args, "--edge-keys", tmp_path / "edge_keys.json")
    assert r.returncode == 2 and "no accepted upload for tasks" in r.said
    reasons = [x["reason"] for x in json.loads((out / "screening.json").read_text())["rejected"]]
    assert len(reasons) == 2 and any("wrong signature" in x for x in reasons)
    assert any("unsigned" in x and "--accept-unsigned" in x for x in reasons)
    assert not (out / "manifest.json").exists()


def test_edge_keys_come_from_the_operator_not_from_whoever_comes_first(tmp_path, keys, monkeypatch):
    """The workflow believes an edge's key when the operator registered it (or, on a simulated
    engine, when it is the key in the edge's own folder of the run directory); an unregistered
    edge is refused unless first-come pinning is explicitly turned on."""
    from baim.cloud.door import FIRST_COME, enrol
    from baim.errors import WorkflowError
    from baim.signing import read_edge_keys, save_private_key, write_edge_keys

    monkeypatch.delenv(FIRST_COME, raising=False)
    hexes = {e: public_bytes(k).hex() for e, k in keys.items()}
    registry = tmp_path / "identities.json"
    write_edge_keys(registry, {0: hexes[0]})
    assert enrol(registry, 0, hexes[0]) == "operator"
    with pytest.raises(WorkflowError, match="registered for it"):
        enrol(registry, 0, hexes[1])  # an impostor presenting its own key for edge 0
    with pytest.raises(WorkflowError, match="no key registered.*edge_keys.json"):
        enrol(registry, 1, hexes[1])
    own = save_private_key(keys[1], tmp_path / "edge-1" / "identity.pem")
    with pytest.raises(WorkflowError, match="other than its own"):
        enrol(registry, 1, hexes[0], own)
    assert enrol(registry, 1, hexes[1], own) == "run folder"
    monkeypatch.setenv(FIRST_COME, "1")
    third = public_bytes(new_key()).hex()
    assert enrol(registry, 2, third) == "first-come"
    assert read_edge_keys(registry) == {0: hexes[0], 1: hexes[1], 2: third}
    with pytest.raises(WorkflowError):  # pinned now: another key is refused even with first-come on
        enrol(registry, 2, hexes[0])


def test_deploy_credentials_write_edge_identities(tmp_path):
    from baim.signing import load_private_key, read_edge_keys

    r = _cli("deploy", "credentials", "--out", tmp_path / "creds", "--nodes", 2)
    assert r.returncode == 0, r.stderr
    keys = read_edge_keys(tmp_path / "creds" / "edge_keys.json")
    assert sorted(keys) == [0, 1]
    for e in (0, 1):
        assert public_bytes(load_private_key(tmp_path / "creds" / f"node-{e}.identity.pem")).hex() == keys[e]
