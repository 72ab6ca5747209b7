"""Wall time and peak memory of the workflow on each engine (smoke preset).

    python benchmarks/engines.py

Runs, one after the other: the in-process engine, Flower's simulation engine, and the
loopback deployment (SuperLink with TLS + SuperNode authentication and 4 SuperNodes, one
killed mid-run; this is the test in tests/test_deployment.py). Memory is the peak of the
summed resident memory of every process on the machine, sampled every 0.25 s, minus what
was resident before the run started, so it covers Ray workers, SuperLink, SuperNodes and
their app processes too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def total_rss_mib() -> float:
    total = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/statm") as fh:
                    total += int(fh.read().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(cmd: list[str]) -> tuple[float, float, int]:
    base = total_rss_mib()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], total_rss_mib())
            time.sleep(0.25)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    rc = subprocess.run(
        cmd, cwd=ROOT, env=dict(os.environ, BAIM_QUIET="1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ).returncode
    wall = time.perf_counter() - t0
    done.set()
    t.join()
    return wall, peak[0] - base, rc


def main() -> None:
    baim = str(Path(sys.executable).parent / "baim")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "in-process": [baim, "run", "--preset", "smoke", "--strategies", "finetune", "--out", f"{tmp}/a"],
            "flower-sim": [
                baim,
                "run",
                "--preset",
                "smoke",
                "--strategies",
                "finetune",
                "--engine",
                "flower-sim",
                "--out",
                f"{tmp}/b",
            ],
            "loopback deployment": [sys.executable, "-m", "pytest", "-q", "tests/test_deployment.py"],
        }
        print(f"{'engine':22} {'wall s':>8} {'peak MiB':>9} {'exit':>5}")
        for name, cmd in runs.items():
            wall, mem, rc = measure(cmd)
            print(f"{name:22} {wall:>8.1f} {mem:>9.0f} {rc:>5}")


if __name__ == "__main__":
    main()
