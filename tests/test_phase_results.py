"""Each phase's typed record: it reads back what it wrote, and writes exactly the JSON the
phases wrote as plain dicts (so old run folders resume and ``summary.json`` is unchanged)."""

from __future__ import annotations

import json

import pytest

from baim.errors import WorkflowError
from baim.rundir import RunDir
from baim.workflow.results import (
    Arrivals,
    Bytes,
    CloudTraining,
    Deployment,
    EdgeEvaluation,
    FinalBaim,
    Integration,
    LayoutResult,
    MissingEdge,
    Partition,
    Personalization,
    Record,
    Screening,
    Upload,
)

BYTES = {"up": 10, "down": 20}
MISSING = [{"edge": 3, "reason": "timed out"}]
METRICS = {"test_loss": 0.5, "fid_fitted": 40.0}

# one stored record per type, as the dict-returning phases wrote them (keys in their order)
STORED: dict[type[Record], dict] = {
    LayoutResult: {"edges": 4, "cloud": 100},
    Upload: {
        "edges": [{"edge": 0, "task": "tops", "samples": 50, "tier": "small", "metrics": {"test_loss": 0.4}}],
        "missing": MISSING,
        "bytes": BYTES,
        "auth": {"run": "ab12", "edges": {"0": {"public_key": "k0", "nonce": "n0"}}},
    },
    Screening: {
        "accepted": [0, 2],
        "rejected": [{"edge": 1, "reason": "duplicate"}],
        "quarantined": [],
        "scores": {"0": 0.3, "2": 0.4},
        "features": {"0": {"norm": 1.0}},
        "seconds": 0.25,
    },
    Arrivals: {
        "schedule": "async",
        "tier_gflops": {"small": 0.5, "large": 2.0},
        "training_flops_per_image": {"small": 1000},
        "finish_s": {"0": 1.5, "2": 3.0},
        "batches": [[0], [2]],
        "join_late": [2],
    },
    CloudTraining: {
        "strategy": "finetune",
        "candidates": 6,
        "connections": 2,
        "parameters": 1234,
        "curve": [{"step": 0, "test_loss_mean": 0.6}],
        "final_test_loss": 0.55,
        "per_task": {"tops": METRICS},
        "step0": {"tops": METRICS},
        "recipe": {"lr": 0.005, "gate_init_from_screening": True},
        "tsgate_accuracy": 0.9,
        "learner_edges": [0, 2],
    },
    Partition: {
        "source_strategy": "finetune",
        "baim_parameters": 1234,
        "tasks": {"tops": {"parameters": 600, "learners": 1, "connections": 0, "bytes": 2400, "max_abs_diff": 0.0}},
        "max_abs_diff": 0.0,
    },
    Deployment: {"edges": [0, 2], "missing": MISSING, "bytes": BYTES},
    Personalization: {"edges": {"0": [{"epoch": 0, "loss": 0.5}]}, "missing": []},
    Integration: {
        "version": 1,
        "edge": 2,
        "task": "tops",
        "deployed": [2],
        "lag_before": {"0": 1},
        "missing": [],
        "cloud_seconds": 1.0,
        "edge_seconds": 0.5,
        "bytes": BYTES,
        "continual": {"untouched_tasks": [], "untouched_max_abs_diff": None, "test_loss_before": {}},
        "log": [{"step": 0}],
        "compact_bytes": 2400,
    },
    FinalBaim: {"version": 1, "parameters": 1300, "per_task": {"tops": METRICS}, "final_test_loss": 0.5},
    EdgeEvaluation: {
        "edges": [{"edge": 0, "task": "tops", "model": "initial"} | METRICS],
        "missing": [{"edge": 3, "reason": "gone", "model": "deployed"}],
        "bytes": BYTES,
    },
}


@pytest.mark.parametrize("kind", list(STORED), ids=lambda k: k.__name__)
def test_round_trip_is_byte_identical(kind: type[Record]) -> None:
    stored = STORED[kind]
    record = kind.from_json(json.loads(json.dumps(stored)))
    assert isinstance(record, kind)
    assert json.dumps(record.to_json(), indent=2) == json.dumps(stored, indent=2)  # same keys, same order
    assert kind.from_json(record.to_json()) == record


def test_records_are_typed_and_frozen() -> None:
    up = Upload.from_json(STORED[Upload])
    assert up.bytes == Bytes(10, 20) and up.missing == (MissingEdge(3, "timed out"),)
    assert up.edges[0].task == "tops" and up.auth.edges["0"].nonce == "n0"
    assert Arrivals.from_json(STORED[Arrivals]).batches == ((0,), (2,))
    assert EdgeEvaluation.from_json(STORED[EdgeEvaluation]).missing[0].model == "deployed"
    with pytest.raises(AttributeError):
        up.bytes.up = 0  # type: ignore[misc]


def test_a_record_with_other_fields_is_refused_clearly() -> None:
    with pytest.raises(WorkflowError, match="Deployment record has fields"):
        Deployment.from_json({"edges": [], "bytes": BYTES})
    with pytest.raises(WorkflowError, match="MissingEdge"):
        MissingEdge.from_json({"edge": 1})


def test_run_dir_stores_and_resumes_a_typed_result(tmp_path) -> None:
    rd = RunDir(tmp_path, {"preset": "smoke"})
    made = Deployment.from_json(STORED[Deployment])
    assert rd.record("deployment", lambda: made, Deployment) is made
    stored = json.loads(rd.files.state("deployment").read_text())["result"]
    assert stored == STORED[Deployment]
    assert rd.record("deployment", lambda: pytest.fail("resumed phase rerun"), Deployment) == made
    assert rd.result("deployment", Deployment).bytes.down == 20 and rd.result("deployment") == stored
