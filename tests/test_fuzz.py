"""Fuzzing every reader of untrusted bytes: random and mutated inputs either load or raise a
BaimError subclass, never another exception, and never allocate what they claim before the
claim is checked (the process's peak memory is bounded per test). Bounded in time: at most
a few hundred examples each, the whole file in well under a minute on 2 cores."""

import copy
import gzip
import json
import resource
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_bytes

from baim.data import read_idx
from baim.errors import BaimError
from baim.learners import LearnerSpec, StagedVAE, read_weights, tier_spec
from baim.models import BAIM, BAIMConfig, Connection, load_model, model_from, save_model, to_parts
from baim.transport import Message, decode, encode

FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
PEAK_GROWTH_LIMIT_MB = 1024  # far below what any of the hostile inputs claims (terabytes)


@contextmanager
def bounded_memory():
    """Fail if the process's peak resident memory grows by more than the limit in the block."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < PEAK_GROWTH_LIMIT_MB, f"peak memory grew by {grown_mb:.0f} MB"


def only_baim_errors(fn, *args, **kwargs):
    """Call ``fn``; a BaimError is an allowed outcome, anything else fails the test."""
    try:
        return fn(*args, **kwargs)
    except BaimError:
        return None


sizes = st.sampled_from([-1, 0, 1, 3, 4, 1024, 4096, 2**20, 2**31, 2**40, 2**63])  # where limits bite
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | sizes | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(obj, prefix=()):
    """Every path to a value inside nested dicts/lists."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_json(draw, original):
    """``original`` with a few values replaced by random JSON, or keys dropped/added."""
    obj = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(obj) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "drop":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return obj


@st.composite
def mutated_bytes(draw, original: bytes):
    """``original`` with bytes flipped, a range cut out, or truncated, or random bytes inserted."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "truncate", "insert"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[i : i + draw(st.integers(1, 64))]
        elif action == "truncate":
            del data[i:]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


torch.manual_seed(0)
SMALL = StagedVAE(tier_spec("small"))
MESSAGE = encode(Message("upload", {"edge": 0, "task": "a", "spec": SMALL.spec.to_dict()}, {"w": torch.ones(3, 4)}))
WEIGHTS = save_bytes({"a": torch.arange(6.0).view(2, 3), "b": torch.zeros(2, dtype=torch.int64)})


def _baim_config() -> dict:
    learners = [StagedVAE(tier_spec("small")), StagedVAE(tier_spec("medium"))]
    model = BAIM.from_learners(learners, [0, 1], ["a", "b"], [Connection("enc", 0, 0, 1, 1)], trimmed={})
    model.trim(0, "dec", 1)
    return model.config.to_dict()


BAIM_CONFIG = _baim_config()


# -- messages ---------------------------------------------------------------------------------
def _nested(n: int) -> bytes:
    header = b'{"kind": "x", "meta": ' + b"[" * n + b"]" * n + b"}"
    return b"BAIM\x01" + len(header).to_bytes(4, "big") + header


@FUZZ
@given(
    st.binary(max_size=2048)
    | st.binary(max_size=64).map(lambda b: b"BAIM\x01" + b)
    | st.integers(0, 200_000).map(_nested)
)
def test_codec_decode_random_bytes(data):
    with bounded_memory():
        only_baim_errors(decode, data)


@FUZZ
@given(mutated_bytes(MESSAGE))
def test_codec_decode_mutated_message(data):
    with bounded_memory():
        msg = only_baim_errors(decode, data)
    if msg is not None:
        assert isinstance(msg.kind, str) and isinstance(msg.meta, dict)


@FUZZ
@given(st.integers(0, 2**32 - 1), st.binary(max_size=256))
def test_codec_decode_lying_header_length(n, rest):
    with bounded_memory():
        only_baim_errors(decode, b"BAIM\x01" + n.to_bytes(4, "big") + rest)


# -- specs and configs --------------------------------------------------------------------------
@FUZZ
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=8) | mutated_json(SMALL.spec.to_dict()))
def test_learner_spec_from_dict(raw):
    spec = only_baim_errors(LearnerSpec.from_dict, raw)
    if spec is not None:  # whatever is accepted is within the limits and can be built without surprises
        with torch.device("meta"):
            model = StagedVAE(spec)
        assert sum(v.numel() for v in model.state_dict().values()) == spec.state_elements()


@FUZZ
@given(mutated_json(BAIM_CONFIG))
def test_baim_config_from_dict(raw):
    cfg = only_baim_errors(BAIMConfig.from_dict, raw)
    if cfg is not None:  # an accepted config builds (on a storage-less device) without an exception
        with torch.device("meta"):
            BAIM(cfg)


# -- saved models ------------------------------------------------------------------------------
MANIFEST, STATE = to_parts(SMALL)


@FUZZ
@given(mutated_json(MANIFEST))
def test_model_from_mutated_manifest(manifest):
    with bounded_memory():
        only_baim_errors(model_from, manifest, STATE, "fuzzed deployment", "learner")


@settings(FUZZ, max_examples=100)
@given(st.sampled_from(["manifest.json", "weights.safetensors"]), st.data())
def test_load_model_on_a_mutated_folder(name, data):
    with tempfile.TemporaryDirectory() as tmp, bounded_memory():
        folder = save_model(SMALL, Path(tmp) / "m", {"metrics.json": "{}"})
        original = (folder / name).read_bytes()
        (folder / name).write_bytes(data.draw(mutated_bytes(original)))
        model = only_baim_errors(load_model, folder)
    if model is not None:  # only a mutation that changed nothing that matters loads
        assert all(torch.equal(model.state_dict()[k], v) for k, v in SMALL.state_dict().items())


@FUZZ
@given(st.binary(max_size=512) | mutated_bytes(WEIGHTS))
def test_read_weights(data):
    with bounded_memory():
        only_baim_errors(read_weights, data, "fuzzed weights")


# -- data files -------------------------------------------------------------------------------
IDX = b"\x00\x00\x08\x03" + (3).to_bytes(4, "big") + (4).to_bytes(4, "big") * 2 + bytes(range(48))


@FUZZ
@given(st.binary(max_size=256) | mutated_bytes(IDX), st.booleans())
def test_read_idx(data, gz):
    with tempfile.TemporaryDirectory() as tmp, bounded_memory():
        path = Path(tmp) / ("x-idx3-ubyte" + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(data) if gz else data)
        arr = only_baim_errors(read_idx, path)
    if arr is not None:
        assert isinstance(arr, np.ndarray)


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


@FUZZ
@given(st.binary(max_size=256) | mutated_bytes(PNG), st.sampled_from([".png", ".jpg", ".bmp"]))
def test_read_images(data, suffix):
    """An image folder's reader: a damaged or hostile image file loads or is a DataError naming it."""
    from baim.data.image_folder import read_images

    with tempfile.TemporaryDirectory() as tmp, bounded_memory():
        (Path(tmp) / f"x{suffix}").write_bytes(data)
        arr = only_baim_errors(read_images, tmp, 16, 1)
    if arr is not None:
        assert arr.shape == (1, 1, 16, 16) and arr.dtype == np.uint8


MULTIPART = (
    b'--B\r\nContent-Disposition: form-data; name="task"\r\n\r\ntops\r\n'
    b'--B\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
    b"Content-Type: image/png\r\n\r\n" + PNG + b"\r\n--B--\r\n"
)


@settings(FUZZ, deadline=None)  # an event loop per example: slow on a loaded machine, not unbounded
@given(st.binary(max_size=256) | mutated_bytes(MULTIPART))
def test_multipart_upload_parser(body):
    """The edge service's multipart reader: a hostile body is a ValueError (the service's 400)
    or UploadTooLarge (its 413), never another exception, and never more than the limits."""
    import asyncio

    from starlette.requests import Request

    from baim.service.limits import UploadTooLarge, read_uploads

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(b"content-type", b"multipart/form-data; boundary=B"), (b"content-length", str(len(body)).encode())]
    request = Request({"type": "http", "method": "POST", "headers": headers}, receive)
    with bounded_memory():
        try:
            fields, files = asyncio.run(read_uploads(request, 4, 1024))
        except (ValueError, UploadTooLarge):
            return
    assert len(files) <= 4 and all(isinstance(v, str) for v in fields.values())


def test_fuzz_inputs_are_really_hostile():
    """The seeds above are valid inputs, so the mutations start from something that loads."""
    assert decode(MESSAGE).kind == "upload" and read_weights(WEIGHTS, "w")["a"].shape == (2, 3)
    assert read_idx_bytes(IDX).shape == (3, 4, 4)
    BAIMConfig.from_dict(json.loads(json.dumps(BAIM_CONFIG)))
    model_from(MANIFEST, STATE, "seed", "learner")


def read_idx_bytes(data: bytes) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x-idx3-ubyte"
        path.write_bytes(data)
        return read_idx(path)


@pytest.mark.parametrize("claim", [2**31, 2**40, 2**63])
def test_hostile_size_claims_are_refused_without_allocation(claim):
    with bounded_memory():
        with pytest.raises(BaimError):
            read_weights(claim.to_bytes(8, "little") + b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', "w")
        with pytest.raises(BaimError):
            read_idx_bytes(b"\x00\x00\x08\x02" + (claim % 2**32 or 1).to_bytes(4, "big") * 2)
