"""SIGKILL ``baim run`` in every kind of phase, rerun it, and get the summary of a run that was
never interrupted.

One run directory is killed four times, each time at a different point (an edge's local
training, the BAIM's training, an edge's personalisation, the edge evaluation), found by
polling the run directory for the file that marks the point; each rerun resumes where the
kill left it. A reference run goes through uninterrupted beside it. The two summaries must
agree on every field except wall-clock times (``seconds``, ``wall_seconds``, ``phase_seconds``,
and the timeline's times, which place the cloud's work at its measured durations: how long
something took, which a kill and a rerun change by construction)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ARGS = ["run", "--preset", "smoke", "--strategies", "finetune"]
TIMING = {"seconds", "wall_seconds", "phase_seconds", "wall_seconds_this_invocation"}
# the timeline places the cloud's work at its measured durations: those times are wall-clock too
TIMING |= {"t_s", "first_deployment_s", "cloud_seconds", "edge_seconds"}
# (file whose appearance marks the point, extra seconds to wait, what is under way when the kill lands)
KILL_POINTS = [
    ("edges/edge-0/initial/manifest.json", 0.0, "local training of edge 1"),
    ("state/screening.json", 0.5, "training the finetune BAIM"),
    ("edges/edge-0/personalized/manifest.json", 0.0, "personalisation of edge 1"),
    # the first edge's first evaluated images: the other edges are still to be evaluated (a fixed
    # delay after personalization.json raced a fast machine, where evaluation finished within it)
    ("images/edge-0/*.npy", 0.0, "evaluation at the edges"),
]


def _start(out: Path) -> subprocess.Popen:
    env = os.environ | {"BAIM_QUIET": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "baim.cli", *ARGS, "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_when(proc: subprocess.Popen, run: Path, marker: str, delay: float, timeout: float = 900) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after a file matching ``marker`` (a glob under ``run``)
    appears."""
    deadline = time.monotonic() + timeout
    while not any(run.glob(marker)):
        assert proc.poll() is None, f"run ended before {marker} appeared:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, f"{marker} did not appear within {timeout} s"
        time.sleep(0.1)
    time.sleep(delay)
    assert proc.poll() is None, f"run ended before the kill at {marker}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def test_sigkill_anywhere_then_rerun_gives_the_uninterrupted_summary(tmp_path):
    reference = _start(tmp_path / "reference")
    run = tmp_path / "killed"
    phases_at_kill = []
    for marker, delay, _what in KILL_POINTS:
        proc = _start(run)
        _kill_when(proc, run, marker, delay)
        assert proc.returncode == -signal.SIGKILL
        phases_at_kill.append(sorted(p.stem for p in (run / "state").glob("*.json")))
    final = subprocess.run(
        [sys.executable, "-m", "baim.cli", *ARGS, "--out", str(run)],
        env=os.environ | {"BAIM_QUIET": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert final.returncode == 0, final.stdout + final.stderr
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out
    # the kills landed in four different phases (each list is what had finished)
    assert "upload" not in phases_at_kill[0]
    assert "screening" in phases_at_kill[1] and "cloud_finetune" not in phases_at_kill[1]
    assert "deployment" in phases_at_kill[2] and "personalization" not in phases_at_kill[2]
    assert "personalization" in phases_at_kill[3] and "edge_evaluation" not in phases_at_kill[3]
    got = json.loads((run / "summary.json").read_text())
    want = json.loads((tmp_path / "reference" / "summary.json").read_text())
    assert _without_timing(got) == _without_timing(want)
    assert got["edges"][1]["models"]["personalized"]["test_loss"] > 0  # a real, finished run
