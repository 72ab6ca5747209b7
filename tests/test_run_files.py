"""The run folder is named in one module (baim.runfiles) and read through one view (baim.runview).

The check below reads every module of src/baim and benchmarks/ and fails when one of them
builds a path with a run-folder name in it (``root / "layout.json"``, ``rd.path("cloud",
...)``, ``f"baim-{s}"`` joined to a folder, ``glob("edge-*.msg")``): a second spelling of the
folder's layout is how a renamed file breaks a reader nobody remembered.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from baim.errors import DataError, WorkflowError
from baim.runfiles import EDGE_MODELS, RunFiles, source_strategy
from baim.runview import Run

REPO = Path(__file__).resolve().parents[1]
RUN_MODULE = "src/baim/runfiles.py"

# a path piece equal to one of these (or starting with one of the prefixes) spells a run-folder file
NAMES = {
    "layout.json",
    "config.json",
    "threads.json",
    "summary.json",
    "report.html",
    ".lock",
    "state",
    "cloud",
    "edges",
    "images",
    "figures",
    "uploads",
    "compact",
    "registry",
    "identities.json",
    "compare_measure.json",
}
PREFIXES = ("baim-", "edge-", "compact-v")
PATH_CALLS = {"path", "joinpath", "glob", "rglob", "Path", "PurePath"}  # whose string arguments are path pieces


def _piece(node: ast.AST) -> str | None:
    """The literal text a path piece starts with: a string, or an f-string's leading text."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        first = node.values[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return None


def _spells_run_file(piece: str) -> bool:
    return any(part in NAMES or part.startswith(PREFIXES) for part in piece.split("/") if part)


def run_file_spellings(source: str) -> list[tuple[int, str]]:
    """(line, piece) of every path piece in ``source`` that names a run-folder file."""
    found = []
    for node in ast.walk(ast.parse(source)):
        pieces: list[ast.AST] = []
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            pieces = [node.left, node.right]
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in PATH_CALLS:
                pieces = list(node.args)
        for p in pieces:
            text = _piece(p)
            if text is not None and _spells_run_file(text):
                found.append((node.lineno, text))
    return found


def test_the_checker_finds_the_spellings_it_is_meant_to_find():
    offending = """
root / "layout.json"
Path(run_dir) / "cloud" / f"baim-{strategy}"
rd.path("images", "real", f"{name}.npy")
folder.glob("edge-*.msg")
run / "state" / f"{name}.json"
out / "cloud/compact"
"""
    found = {text for _, text in run_file_spellings(offending)}
    assert found == {"layout.json", "cloud", "baim-", "images", "edge-*.msg", "state", "cloud/compact"}
    harmless = """
{"edge": e, "cloud": 1, "compact": 2}
Message("images", {}, {"images": x})
load_model(folder, "compact")
out / "methods" / f"{name}.json"
Path(tmp) / "cloud.log"
meter.side("edge", phase)
f"edge-{e}"
"""
    assert run_file_spellings(harmless) == []


def test_only_the_run_module_spells_run_folder_files():
    files = sorted((REPO / "src" / "baim").rglob("*.py")) + sorted((REPO / "benchmarks").glob("*.py"))
    assert len(files) > 50
    offenders = [
        f"{f.relative_to(REPO)}:{line}: {text!r}"
        for f in files
        if f.relative_to(REPO).as_posix() != RUN_MODULE
        for line, text in run_file_spellings(f.read_text())
    ]
    assert not offenders, "spell these through baim.runfiles.RunFiles / baim.runview.Run:\n" + "\n".join(offenders)


def test_run_files_names_every_file_of_a_run(tmp_path):
    f = RunFiles(tmp_path)
    assert f.baim("finetune") == tmp_path / "cloud" / "baim-finetune"
    assert f.baim("finetune", 2) == tmp_path / "cloud" / "baim-finetune-v2"
    assert f.compact("tops") == tmp_path / "cloud" / "compact" / "tops"
    assert f.compact("tops", 1) == tmp_path / "cloud" / "compact-v1" / "tops"
    assert f.edge(3, "deployed") == tmp_path / "edges" / "edge-3" / "deployed"
    assert f.state("cloud_finetune") == tmp_path / "state" / "cloud_finetune.json"
    for e in (10, 2):
        f.upload(e).parent.mkdir(parents=True, exist_ok=True)
        f.upload(e).write_bytes(b"x")
    assert f.uploads() == {2: f.upload(2), 10: f.upload(10)}
    for e in (10, 2):
        p = f.edge_images(e, "initial", "fitted")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    assert [e for e, _ in f.edge_image_files("initial", "fitted")] == [2, 10]
    assert EDGE_MODELS == ("initial", "deployed", "personalized")


def test_source_strategy_follows_the_partition_record_then_the_config(tmp_path):
    assert source_strategy(("scratch", "finetune")) == "finetune"
    assert source_strategy(["freeze", "scratch"]) == "freeze"
    run = Run(tmp_path)
    assert run.source_strategy == "finetune"  # a folder baim run did not make
    f = RunFiles(tmp_path)
    f.config.write_text(json.dumps({"strategies": ["scratch", "freeze"]}))
    assert Run(tmp_path).source_strategy == "scratch"
    f.state_dir.mkdir()
    record = {"phase": "partition", "seconds": 1.5, "result": {"source_strategy": "freeze"}}
    f.state("partition").write_text(json.dumps(record))
    run = Run(tmp_path)
    assert run.source_strategy == "freeze" and run.seconds("partition") == 1.5 and run.done("partition")


def test_run_refuses_what_is_not_there(tmp_path):
    with pytest.raises(DataError, match="not a run folder"):
        Run.open(tmp_path)
    with pytest.raises(WorkflowError, match="has not finished"):
        Run(tmp_path).result("screening")
    with pytest.raises(WorkflowError, match="no finished run"):
        Run(tmp_path).summary()


def test_rundir_records_a_phase_once_and_reads_without_running(tmp_path):
    from baim.rundir import RunDir

    rd = RunDir(tmp_path, {"preset": "smoke"})
    with pytest.raises(WorkflowError, match="has not finished"):
        rd.result("upload")
    calls = []
    assert rd.record("upload", lambda: calls.append(1) or {"n": 1}) == {"n": 1}
    assert rd.record("upload", lambda: calls.append(2) or {"n": 2}) == {"n": 1}  # resumed, not rerun
    assert calls == [1] and rd.result("upload") == {"n": 1} and rd.done("upload")
    assert Run(tmp_path).result("upload") == {"n": 1} and set(rd.phase_seconds()) == {"upload"}
