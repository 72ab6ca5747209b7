"""A real loopback deployment: SuperLink with TLS and SuperNode authentication, SuperNodes
registered with the flwr CLI, the app submitted with `flwr run`. Everything binds to
127.0.0.1, every process is stopped by PID, and every wait is bounded."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from baim.config import RunConfig
from baim.federation.deploy import APP_DIR, make_credentials, superlink_command, supernode_command, write_flower_config
from baim.workflow import prepare

pytestmark = pytest.mark.integration


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_port(port, deadline, proc, log):
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"port {port} did not open")


@pytest.fixture
def federation(tmp_path):
    venv_bin = str(Path(sys.executable).parent)  # flower-superexec & co. must be on PATH
    env = dict(
        os.environ,
        FLWR_HOME=str(tmp_path / "flwr"),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        BAIM_QUIET="1",
        PATH=venv_bin + os.pathsep + os.environ["PATH"],
    )
    procs: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name, cmd):
        out = open(logs / f"{name}.log", "w")
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
        procs.append(p)
        return p

    yield env, start, logs
    for p in procs:  # stop by PID (and the app processes they started)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def test_loopback_deployment_tls_auth_and_a_killed_node(tmp_path, federation):
    env, start, logs = federation
    deadline = time.monotonic() + 900  # the whole test is bounded
    run_dir = tmp_path / "run"
    prepare(run_dir, RunConfig(preset="smoke", strategies=("freeze",), engine="flower"))
    creds = tmp_path / "creds"
    make_credentials(creds, nodes=4)  # node-3 is never registered
    port, *node_ports = _free_ports(5)
    write_flower_config(env["FLWR_HOME"], f"127.0.0.1:{port}", creds / "ca.crt")
    link = start("superlink", superlink_command(creds, port=port))
    _wait_port(port, deadline, link, logs / "superlink.log")
    flwr = str(Path(superlink_command(creds)[0]).parent / "flwr")
    for i in range(3):
        r = subprocess.run(
            [flwr, "supernode", "register", str(creds / f"node-{i}.pub"), "baim"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stdout + r.stderr
    nodes = [
        start(
            f"node-{i}",
            supernode_command(
                creds, creds / f"node-{i}", i, run_dir, superlink=f"127.0.0.1:{port}", runtime_port=node_ports[i]
            ),
        )
        for i in range(3)
    ]
    intruder = start(
        "node-3",
        supernode_command(
            creds, creds / "node-3", 0, run_dir, superlink=f"127.0.0.1:{port}", runtime_port=node_ports[3]
        ),
    )
    r = subprocess.run(
        [
            flwr,
            "run",
            str(APP_DIR),
            "baim",
            "--format",
            "json",
            "--run-config",
            f"run-dir='{run_dir}' edges=3 timeout=120.0 strategies='freeze'",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # kill edge 1 once every edge has uploaded: the run must report it and finish without it
    while not (run_dir / "state" / "upload.json").is_file() and time.monotonic() < deadline:
        time.sleep(1)
    assert (run_dir / "state" / "upload.json").is_file(), (logs / "superlink.log").read_text()[-3000:]
    os.killpg(nodes[1].pid, signal.SIGKILL)
    while not (run_dir / "summary.json").is_file() and time.monotonic() < deadline:
        time.sleep(1)
    # an edge that misses its upload (slow training past the timeout) ends the run: every task needs one
    uploaded = json.loads((run_dir / "state" / "upload.json").read_text())["result"]
    assert not uploaded.get("missing"), uploaded["missing"]
    assert (run_dir / "summary.json").is_file(), sorted(p.name for p in (run_dir / "state").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["engine"] == "flower"
    assert [u["edge"] for u in json.loads((run_dir / "state" / "upload.json").read_text())["result"]["edges"]] == [
        0,
        1,
        2,
    ]
    assert [m["edge"] for m in summary["missing"]["deployment"]] == [1]
    assert summary["edges"][0]["models"]["personalized"]["fid_fitted"] > 0
    assert "personalized" not in summary["edges"][1]["models"]
    # the unregistered SuperNode was refused: it never became an edge of the run and gave up
    assert intruder.wait(timeout=max(1, deadline - time.monotonic())) != 0
    assert "Failed to activate SuperNode" in (logs / "node-3.log").read_text()
