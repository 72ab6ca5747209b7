"""Faults baim must survive with a clear BaimError, nothing half-written and nothing lost
(docs/reliability.md cites these tests row by row)."""

import gzip
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save as save_bytes

from baim.data import load_dataset, read_idx
from baim.data.base import ArraySource
from baim.data.layout import Layout
from baim.errors import DataError, MessageError, ModelFileError, SpecError
from baim.learners import LearnerSpec, StagedVAE, read_weights, tier_spec
from baim.models import BAIM, BAIMConfig, is_saved, load_model, model_from, save_model
from baim.models import io as model_io
from baim.models.io import manifest_of
from baim.transport import Message, decode, encode


def _header_message(header: bytes) -> bytes:
    return b"BAIM\x01" + len(header).to_bytes(4, "big") + header


# -- messages -----------------------------------------------------------------------------
def test_deeply_nested_header_is_a_message_error_not_a_recursion_error():
    for header in (b"[" * 100_000 + b"]" * 100_000, b'{"kind": "x", "meta": ' + b'{"a":' * 40 + b"1" + b"}" * 41):
        with pytest.raises(MessageError, match="nests deeper"):
            decode(_header_message(header))
    # brackets inside strings are text, not nesting: a real message with them decodes
    msg = Message("upload", {"note": "[[[[" * 50 + "{{{{" * 50})
    assert decode(encode(msg)).meta == msg.meta


# -- limits before building ---------------------------------------------------------------
@pytest.mark.parametrize(
    "spec,match",
    [
        ({"image_size": 1 << 40, "stage_widths": [4096], "latent_dim": 4096}, "image_size"),
        ({"image_size": 1024, "stage_widths": [4096], "latent_dim": 4096}, "limit"),
        ({"image_size": 32, "stage_widths": [16], "latent_dim": 8, "tier": ["x"]}, "tier"),
        ({"image_size": 32, "stage_widths": [16] * 40, "latent_dim": 8}, "stage_widths"),
        ({"image_size": 32, "stage_widths": [16], "latent_dim": 8, "channels": True}, "channels"),
    ],
)
def test_spec_limits_are_checked_before_anything_is_built(spec, match):
    with pytest.raises(SpecError, match=match):
        LearnerSpec.from_dict({"channels": 1} | spec)


def test_spec_state_size_is_what_building_allocates():
    for tier in ("small", "medium", "large"):
        for size, channels in ((32, 1), (64, 3)):
            spec = tier_spec(tier, size, channels)
            assert spec.state_elements() == sum(v.numel() for v in StagedVAE(spec).state_dict().values())


def _two_task_baim() -> BAIM:
    torch.manual_seed(0)
    learners = [StagedVAE(tier_spec("small")), StagedVAE(tier_spec("small"))]
    from baim.models import Connection

    return BAIM.from_learners(learners, [0, 1], ["a", "b"], [Connection("dec", 0, 0, 1, 1)], top_k=1)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda c: c.update(learner_tasks=[0, 5]), "learner_tasks"),
        (lambda c: c.update(learner_tasks=[0, 0]), "no learner"),
        (lambda c: c["connections"][0].update(dst_stage=9), "stages"),
        (lambda c: c["connections"][0].update(src=1), "distinct"),
        (lambda c: c["connections"].append(dict(c["connections"][0])), "twice"),
        (lambda c: c.update(trimmed={"7": {"enc": 1}}), "trimmed"),
        (lambda c: c.update(trimmed={"0": {"enc": 99}}), "trimmed"),
        (lambda c: c.update(top_k=0), "top_k"),
        (lambda c: c.update(has_tsgate="false"), "has_tsgate"),
        (lambda c: c.update(learner_specs=[c["learner_specs"][0]] * 300, learner_tasks=[0] * 300), "at most"),
        (lambda c: c.pop("frozen"), "missing"),
        (lambda c: c.update(latent_dim=4), "smaller"),
    ],
)
def test_malformed_baim_config_is_a_spec_error(mutate, match):
    cfg = _two_task_baim().config.to_dict()
    BAIMConfig.from_dict(json.loads(json.dumps(cfg)))  # the unmutated config is fine
    mutate(cfg)
    with pytest.raises(SpecError, match=match):
        BAIMConfig.from_dict(cfg)


def test_a_manifest_describing_more_than_its_weights_is_refused_before_allocating(monkeypatch):
    """A tampered manifest (here a deployment to an edge) must not make the receiver build the
    module it describes: the config is checked against the weights on a storage-less skeleton."""
    small = StagedVAE(tier_spec("small"))
    manifest, state = model_io.to_parts(small)
    manifest["config"] = LearnerSpec(
        image_size=256, channels=1, stage_widths=(64, 64, 64), latent_dim=256
    ).to_dict()  # 200 MB
    devices = []
    real_init = StagedVAE.__init__

    def recording(self, spec):
        devices.append(torch.empty(0).device.type)
        real_init(self, spec)

    monkeypatch.setattr(StagedVAE, "__init__", recording)
    with pytest.raises(ModelFileError, match="shape"):
        model_from(manifest, state, "deployment to edge 0", "learner")
    assert devices == ["meta"]  # only the skeleton was built, and it holds no storage


def test_weights_of_the_right_shape_but_another_dtype_are_refused():
    model = StagedVAE(tier_spec("small"))
    state = {k: (v.double() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    with pytest.raises(ModelFileError, match="float64"):
        model_from(manifest_of(model, save_bytes(state)), state, "upload")


def test_weights_file_size_and_safetensors_header_are_checked_before_reading(tmp_path):
    save_model(StagedVAE(tier_spec("small")), tmp_path / "m")
    w = tmp_path / "m" / "weights.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="manifest says"):
        load_model(tmp_path / "m")
    terabytes = (1 << 40).to_bytes(8, "little") + b"{}"
    with pytest.raises(ModelFileError, match="claims 1099511627776 bytes"):
        read_weights(terabytes, "upload")


def test_a_resave_interrupted_after_its_weights_is_never_marked_saved(tmp_path, monkeypatch):
    """Re-saving into a folder that holds a save (a deployment resent after a kill, a phase
    redone) must not leave the old manifest beside new weights: that folder would look saved
    and fail its sha256 on every rerun."""
    torch.manual_seed(0)
    a, b = StagedVAE(tier_spec("small")), StagedVAE(tier_spec("small"))
    save_model(a, tmp_path / "m", {"log.json": "[1]"})
    real_write_text = model_io.write_text

    def killed_at_manifest(path, text):
        if os.path.basename(path) == "manifest.json":
            raise KeyboardInterrupt
        return real_write_text(path, text)

    monkeypatch.setattr(model_io, "write_text", killed_at_manifest)
    with pytest.raises(KeyboardInterrupt):
        save_model(b, tmp_path / "m", {"log.json": "[2]"})
    assert not is_saved(tmp_path / "m")  # a rerun redoes the save instead of failing for good
    monkeypatch.setattr(model_io, "write_text", real_write_text)
    save_model(b, tmp_path / "m", {"log.json": "[2]"})
    back = load_model(tmp_path / "m", "learner")
    assert all(torch.equal(back.state_dict()[k], v) for k, v in b.state_dict().items())


# -- data ---------------------------------------------------------------------------------
def test_negative_or_out_of_range_image_indices_are_refused():
    src = ArraySource(np.zeros((5, 1, 4, 4), np.uint8), np.zeros(5, np.int64))
    assert src.load([0, 4]).shape == (2, 1, 4, 4)
    for bad in ([-1], [5]):
        with pytest.raises(DataError, match="outside this split"):
            src.load(bad)


def test_layout_with_negative_or_non_integer_indices_is_refused(tmp_path, fmnist):
    from baim.data.layout import make_layout
    from baim.presets import get_preset

    path = make_layout(fmnist, get_preset("smoke"), seed=0).save(tmp_path / "layout.json")
    raw = json.loads(path.read_text())
    for edit, match in (
        (lambda r: r["edges"][0]["indices"].__setitem__(0, -3), "non-negative"),
        (lambda r: r["cloud"].__setitem__(0, "7"), "non-negative"),
        (lambda r: r["edges"][0].__setitem__("task", -1), "malformed"),
        (lambda r: r.__setitem__("edges", [{"edge": 0}]), "not a valid layout"),
    ):
        bad = json.loads(json.dumps(raw))
        edit(bad)
        path.write_text(json.dumps(bad))
        with pytest.raises(DataError, match=match) as err:
            Layout.load(path)
        assert str(path) in str(err.value)


def test_hidden_entries_of_an_image_folder_are_not_tasks_or_images(tmp_path):
    for task in ("cats", "dogs", ".ipynb_checkpoints"):
        (tmp_path / task).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(tmp_path / task / f"{i}.png")
    (tmp_path / "cats" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble, not an image")
    ds = load_dataset("image-folder", str(tmp_path), image_size=8)
    assert [t.name for t in ds.tasks] == ["cats", "dogs"] and len(ds.train) + len(ds.test) == 6


def test_idx_header_claiming_terabytes_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\xff\xff\xff\xff" * 3 + b"\x00" * 100))
    with pytest.raises(DataError, match="over baim's limit") as err:
        read_idx(path)
    assert str(path) in str(err.value)


# -- training that diverges ---------------------------------------------------------------
def _noise_images(n: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 1, 32, 32), dtype=np.uint8)


def test_a_diverging_learner_is_an_error_not_nan_metrics():
    from baim.config import Recipe
    from baim.edge.train import train_learner
    from baim.errors import TrainingDiverged

    x = _noise_images()
    torch.manual_seed(0)
    with pytest.raises(TrainingDiverged, match="edge 0 diverged in epoch 1: test_loss not finite"):
        train_learner(StagedVAE(tier_spec("small")), x, Recipe(3, batch_size=32, lr=1e12), "edge 0", x[:8])
    with pytest.raises(TrainingDiverged, match=r"all 2 steps' losses were NaN"):  # no test set: caught at epoch 2
        train_learner(StagedVAE(tier_spec("small")), x, Recipe(3, batch_size=32, lr=1e12), "edge 0")


def test_a_diverging_baim_is_an_error_not_nan_metrics():
    from baim.config import Recipe
    from baim.errors import TrainingDiverged
    from baim.models import train_baim

    x = _noise_images()
    model = _two_task_baim()
    with pytest.raises(TrainingDiverged, match="BAIM finetune diverged"):
        train_baim(
            model, x, np.arange(64) % 2, Recipe(3, batch_size=32, lr=1e12), {0: x[:8], 1: x[8:16]}, "BAIM finetune"
        )


def test_edge_train_command_exits_non_zero_on_divergence_and_saves_nothing(tmp_path, capsys):
    from baim.cli import main

    assert main(["layout", "--preset", "smoke", "--out", str(tmp_path)]) == 0
    layout = json.loads((tmp_path / "layout.json").read_text())
    layout["preset"]["edge"]["lr"] = 1e12
    (tmp_path / "layout.json").write_text(json.dumps(layout))
    capsys.readouterr()
    args = ["edge", "train", "--layout", str(tmp_path / "layout.json"), "--edge", "0", "--out", str(tmp_path / "e0")]
    assert main(args) == 2
    assert "diverged in epoch 1" in capsys.readouterr().out
    assert not is_saved(tmp_path / "e0")


# -- run directories -----------------------------------------------------------------------
def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(tmp_path):
    import subprocess
    import sys

    from baim.rundir import RunDir

    held = RunDir(tmp_path, {"preset": "smoke"})
    code = f"from baim.rundir import RunDir; RunDir({str(tmp_path)!r}, {{'preset': 'smoke'}})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "RunDirBusy" in r.stderr and f"pid {os.getpid()}" in r.stderr
    again = RunDir(tmp_path, {"preset": "smoke"})  # this process may open it again (Flower's ServerApp does)
    assert again.config == held.config
    del held, again  # the lock goes with the last RunDir of the folder (and with the process, however it dies)
    r = subprocess.run([sys.executable, "-c", code + "; print('ok')"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_a_resume_with_another_thread_count_is_refused_saying_how_to_match(tmp_path):
    from baim.errors import RunConfigMismatch
    from baim.rundir import RunDir

    RunDir(tmp_path, {"preset": "smoke"})
    recorded = json.loads((tmp_path / "threads.json").read_text())["torch_threads"]
    assert recorded == torch.get_num_threads()
    (tmp_path / "threads.json").write_text(json.dumps({"torch_threads": recorded + 3}))
    with pytest.raises(RunConfigMismatch, match=f"OMP_NUM_THREADS={recorded + 3}"):
        RunDir(tmp_path, {"preset": "smoke"})


def test_an_unavailable_fid_extractor_is_refused_before_the_run_directory_is_claimed(tmp_path, monkeypatch, capsys):
    from baim.cli import main

    monkeypatch.delenv("BAIM_INCEPTION_WEIGHTS", raising=False)
    out = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--fid-extractor", "inception", "--out", str(out)]) == 2
    assert "inception extractor needs" in capsys.readouterr().out
    assert not (out / "config.json").exists()  # the corrected command is not refused as another run


# -- command-line arguments ------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv,match",
    [
        (["edge", "train", "--layout", "L", "--edge", "0", "--out", "O", "--epochs", "-1"], "--epochs: must be ≥ 1"),
        (["edge", "train", "--layout", "L", "--edge", "0", "--out", "O", "--epochs", "0"], "--epochs: must be ≥ 1"),
        (["edge", "train", "--layout", "L", "--edge", "-1", "--out", "O"], "--edge: must be ≥ 0"),
        (["cloud", "train", "--layout", "L", "--uploads", "U", "--out", "O", "--epochs", "0"], "--epochs"),
        (["cloud", "train", "--layout", "L", "--uploads", "U", "--out", "O", "--top-k", "0"], "--top-k"),
        (["cloud", "train", "--layout", "L", "--uploads", "U", "--out", "O", "--height", "-2"], "--height"),
        (["cloud", "train", "--layout", "L", "--uploads", "U", "--out", "O", "--prune-ratio", "nan"], "--prune-ratio"),
        (["cloud", "train", "--layout", "L", "--uploads", "U", "--out", "O", "--prune-ratio", "1.5"], "--prune-ratio"),
        (["layout", "--out", "O", "--edges", "0"], "--edges"),
        (["layout", "--out", "O", "--alpha", "-0.5"], "--alpha"),
        (["run", "--out", "O", "--seed", "-1"], "--seed: must be ≥ 0"),
        (["evaluate", "--model", "M", "--layout", "L", "--task", "0", "--fid-count", "1"], "--fid-count"),
        (["domain", "train", "--epochs", "0"], "--epochs"),
        (["deploy", "credentials", "--out", "O", "--nodes", "0"], "--nodes"),
    ],
)
def test_negative_and_zero_numeric_arguments_are_refused_at_parse_time(argv, match, capsys, tmp_path, monkeypatch):
    from baim.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and match in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_negative_sweep_seeds_are_refused(tmp_path, capsys):
    from baim.cli import main

    assert main(["sweep", "--seeds", "0,-1", "--out", str(tmp_path / "s")]) == 2
    assert "non-negative" in capsys.readouterr().out and not (tmp_path / "s").exists()


# -- edges that answer wrongly ---------------------------------------------------------------
class _Impostor:
    def handle(self, msg: Message) -> Message:
        return Message("upload", {"edge": 5, "task": "a"})


def test_an_in_process_edge_answering_as_another_edge_is_reported_missing():
    from baim.transport import InProcessTransport

    reply = InProcessTransport({0: _Impostor()}).request(0, Message("train.local"), 10, "upload")
    assert reply.kind == "error" and "edge 0 answered as edge 5" in reply.meta["error"]


class _TamperingGrid:
    """A Flower grid whose nodes answer with what ``answers[node]`` returns (bytes), from the
    node ``sender.get(node, node)``."""

    def __init__(self, answers: dict, sender: dict | None = None):
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.answers, self.sender, self.sent = answers, sender or {}, 0
        self.twice: set[int] = set()  # nodes that answer every message twice

    def get_node_ids(self):
        return list(self.answers)

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Message as FlowerMessage

        from baim.federation.transport import to_record

        replies = []
        for m in messages:
            self.sent += 1
            m.metadata.__dict__["_message_id"] = f"m{self.sent}"
            node = m.metadata.dst_node_id
            reply = FlowerMessage(to_record(self.answers[node](m.metadata.message_type)), reply_to=m)
            reply.metadata.__dict__["_src_node_id"] = self.sender.get(node, node)
            replies.append(reply)
            if node in self.twice:
                again = FlowerMessage(to_record(encode(Message("error", {"error": "second answer"}))), reply_to=m)
                again.metadata.__dict__["_src_node_id"] = node
                replies.append(again)
        return replies


def _info(edge):
    return lambda kind: encode(
        Message("info", {"edge": edge}) if kind == "query.info" else Message("ack", {"edge": edge})
    )


def test_flower_edges_that_lie_or_send_garbage_are_reported_not_fatal():
    from baim.federation.transport import FlowerTransport

    garbage = lambda kind: b"BAIM\x01\x00\x00\x00\x05[[[[["  # noqa: E731
    answers = {1: _info(0), 2: _info(1), 3: _info(1), 4: garbage, 5: _info(2), 6: _info(3)}
    grid = _TamperingGrid(answers)
    t = FlowerTransport(grid, expected_edges=6, discovery_timeout=5)
    assert t.edges() == [0, 2, 3]  # two nodes claiming edge 1: neither; garbage: not an edge
    assert {r.get("edge") for r in t.refused} >= {1} and any("unreadable" in r["reason"] for r in t.refused)
    assert t.request(0, Message("train.deploy"), 5, "deployment").kind == "ack"
    grid.answers[5] = garbage  # edge 2 now answers with bytes that are not a message
    reply = t.request(2, Message("train.deploy"), 5, "deployment")
    assert reply.kind == "error" and "unreadable reply" in reply.meta["error"]
    grid.answers[5] = _info(0)  # edge 2 answers as edge 0
    assert "answered as edge 0" in t.request(2, Message("train.deploy"), 5, "deployment").meta["error"]
    grid.twice.add(1)  # edge 0 answers twice: the first answer counts, once
    before = len(t.ledger.messages)
    assert t.request(0, Message("train.deploy"), 5, "deployment").kind == "ack"
    assert [m["direction"] for m in t.ledger.messages[before:]] == ["down", "up"]
    grid.sender = {6: 1}  # edge 3's request is answered by node 1
    reply = t.request(3, Message("train.deploy"), 5, "deployment")
    assert reply.kind == "error" and "from node 1" in reply.meta["error"]


# -- artifacts: pickles, full disks, unreadable images -------------------------------------------
def test_pickled_weights_are_never_unpickled(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    for payload in (pickle.dumps(Boom()), _torch_save_bytes({"w": torch.ones(2)})):
        with pytest.raises(ModelFileError, match="not a readable safetensors"):
            read_weights(payload, "upload")
        with pytest.raises(MessageError):
            decode(encode(Message("upload", {})) + payload)
    assert not (tmp_path / "pwned").exists()


def _torch_save_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_a_full_disk_mid_write_leaves_the_old_artifact_and_no_temporary_file(tmp_path):
    import errno

    from baim.atomic import atomic_write, write_json

    target = write_json(tmp_path / "state.json", {"phase": "old"})

    def half_then_enospc(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(b'{"phase": "ne')
        raise OSError(errno.ENOSPC, "No space left on device")

    from baim.errors import DiskFull

    # an error naming where and how much, not a traceback
    with pytest.raises(DiskFull, match=r"no space left to write .*state\.json \(it needs over 0\.0 MB; .* MB free in"):
        atomic_write(target, half_then_enospc)
    assert json.loads(target.read_text()) == {"phase": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no .tmp left behind


def test_an_unreadable_image_in_an_image_folder_is_named(tmp_path):
    (tmp_path / "cats").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "cats" / "0.png")
    (tmp_path / "cats" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match="1.png"):
        load_dataset("image-folder", str(tmp_path), image_size=8)


@pytest.mark.parametrize(
    "name, damage",
    [
        ("manifest is a list", lambda f: (f / "manifest.json").write_text("[]")),
        ("metrics is a list", lambda f: (f / "metrics.json").write_text("[1]")),
        ("metrics nests deep", lambda f: (f / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)),
        ("manifest not UTF-8", lambda f: (f / "manifest.json").write_bytes(b"\xff\xfe\x00")),
        ("metrics missing", lambda f: (f / "metrics.json").unlink()),
        ("weights truncated", lambda f: (f / "weights.safetensors").write_bytes(b"\x08" + b"\x00" * 20)),
    ],
)
def test_cloud_train_names_a_corrupt_saved_learner_instead_of_a_traceback(tmp_path, name, damage):
    from baim.cloud.uploads import read_uploads
    from baim.errors import BaimError

    folder = tmp_path / "uploads" / "edge-0"
    save_model(StagedVAE(tier_spec("small")), folder, {"metrics.json": json.dumps({"task": "tops", "samples": 10})})
    damage(folder)
    with pytest.raises(BaimError, match="edge-0"):
        read_uploads(tmp_path / "uploads")


def _fmnist_copy(folder):
    import shutil

    from baim.data.fashion_mnist import DEFAULT_DIR

    shutil.copytree(DEFAULT_DIR, folder)
    return folder


def test_a_resume_on_changed_inputs_is_refused(tmp_path):
    """The run records a fingerprint of its inputs; a resume after a data file or the layout
    changed is refused with a message naming what changed and the fix."""
    import gzip

    from baim.config import RunConfig
    from baim.errors import RunConfigMismatch
    from baim.workflow import prepare

    data = _fmnist_copy(tmp_path / "data")
    cfg = RunConfig(preset="smoke", data_dir=str(data))
    run = tmp_path / "run"
    rd = prepare(run, cfg)[0]
    del rd
    prepare(run, cfg)  # same inputs: resumes
    labels = data / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10  # one test image changes class
    labels.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(RunConfigMismatch, match="t10k-labels-idx1-ubyte.gz changed.*start a new run"):
        prepare(run, cfg)
    _fmnist_copy(tmp_path / "data2")
    cfg2 = RunConfig(preset="smoke", data_dir=str(tmp_path / "data2"))
    run2 = tmp_path / "run2"
    prepare(run2, cfg2)
    layout = run2 / "layout.json"
    layout.write_text(layout.read_text().replace('"seed"', '"seed" ', 1) + " ")
    with pytest.raises(RunConfigMismatch, match="layout.json was edited"):
        prepare(run2, cfg2)


def test_an_edge_that_failed_for_a_local_reason_is_retried_on_rerun(tmp_path):
    """A phase that left an edge missing because its disk was full is redone on rerun (with
    every phase recorded after it); one missing for another reason stays recorded."""
    from baim.resume import reopen_local_failures
    from baim.rundir import RunDir

    rd = RunDir(tmp_path, {"k": 1})
    rd.record("layout", lambda: {"edges": 2})
    rd.record("upload", lambda: {"missing": [{"edge": 1, "reason": "edge 1: refused by the operator"}]})
    rd.record("screening", lambda: {"accepted": [0]})
    assert reopen_local_failures(rd) == [] and rd.done("upload")
    rd.record("deployment", lambda: {"missing": [{"edge": 1, "reason": "edge 1: no space left to write x"}]})
    rd.record("personalization", lambda: {"missing": []})
    assert reopen_local_failures(rd) == ["deployment", "personalization"]
    assert rd.done("screening") and not rd.done("deployment") and not rd.done("personalization")


def test_task_folders_that_cannot_name_a_registry_entry_are_refused_up_front(tmp_path):
    """Spaces, accents, CJK, a leading dash: refused when the data set is opened (before any
    training or run folder), every bad name listed with a usable one to rename it to."""
    from baim.data.image_folder import load_image_folder
    from baim.errors import ConfigError
    from baim.names import is_task_name, suggest_task_name

    for name in ("good", "my cats", "café", "猫", "-dash"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "0.png").write_bytes(b"not an image: never read")
    with pytest.raises(ConfigError) as info:
        load_image_folder(tmp_path)
    said = str(info.value)
    assert "4 task name(s)" in said and "'my cats' → 'my_cats'" in said and "'café' → 'cafe'" in said
    assert "'-dash' → 'dash'" in said and "'猫' → 'task'" in said and "'good'" not in said
    for odd in ("..", "a/../b", " x ", "ü" * 300, "", "-", "._x", "a..b"):
        assert is_task_name(suggest_task_name(odd)), odd
