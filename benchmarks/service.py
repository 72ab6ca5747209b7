"""Load test of the GenAI service on loopback: latency, throughput, Zipf hit ratio, memory.

Starts a real cloud registry and a real edge service (``baim serve cloud`` / ``baim serve
edge``, each its own process, as a user would) over a synthetic run of ``--tasks`` compact
models of the quick preset's tiers, and drives them with an asyncio httpx client. Bounded:
every phase has a fixed request count, and the servers are stopped at the end. Threading is
pinned here, the same on both sides: ``--threads`` intra-op threads for torch in the edge
(``OMP_NUM_THREADS``) and in this process (``torch.set_num_threads``).

Measured (16-image ``.npy`` requests unless said otherwise):
- ``edge_start_s``: from launching ``baim serve edge`` to its ``/healthz`` answering (the cold
  start: Python, torch, the toolbox check), and ``first_request_ms``: its first request;
- ``hit_p50_ms``/``hit_p99_ms``: the edge's own model, served from memory;
- ``miss_p50_ms``/``miss_p99_ms``: a task dropped from the toolbox first, so each request
  fetches, verifies, stores and loads it; ``miss_hit_ratio`` = miss p50 / hit p50;
- ``throughput_ratio``: memory hits per second (``--concurrency`` clients; the edge runs one
  forward at a time in a worker thread and overlaps HTTP and encoding with it) over raw
  forwards per second of the same model in this process, driven the same way: the same
  number of clients, one forward at a time in a worker thread (goal ≥ 0.8);
- ``memory_hit_ratio`` (the headline), ``disk_hit_ratio`` and ``miss_ratio`` under a
  Zipf(``--zipf``) mix over all tasks with a memory budget of ``--budget-models`` models
  (< the task count): a disk hit needs no network but loads and re-verifies the model;
- ``cycle_rss_growth``: the edge's resident memory after ``--cycles`` evict/load cycles
  (budget of one model, two tasks alternating) relative to after the first 10, with the
  samples every 10 cycles (a slope, not two points, tells growth from allocator noise);
- ``rss_growth``: the edge's resident memory under a 400 MiB chunked ``POST /v1/generate``
  (sampled while it is sent and after its 413) relative to before it (goal ≤ 0.05).

Prints the figures and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from baim.cloud import fuse, partition
from baim.cloud.registry import Registry
from baim.data import to_uint8
from baim.learners import StagedVAE, tier_spec
from baim.models import load_model, save_model
from baim.models.evaluation import generate
from baim.runfiles import RunFiles
from baim.service.toolbox import model_bytes

N = 16


def build_run(root: Path, tasks: int, seed: int = 0) -> list[str]:
    """``tasks`` compact models, each a squad of a small, a medium and a large learner (the
    quick preset's tiers), fused and partitioned one task at a time."""
    torch.manual_seed(seed)
    names = [f"task{t}" for t in range(tasks)]
    for t, name in enumerate(names):
        learners = []
        for tier in ("small", "medium", "large"):
            m = StagedVAE(tier_spec(tier))
            m.train()
            m(torch.rand(16, 1, 32, 32))
            learners.append(m.eval())
        compact = partition(fuse(learners, [0, 0, 0], [name], top_k=2, height=3, seed=seed + t), 0)
        save_model(compact, RunFiles(root).compact(name))
        if t == 0:
            save_model(compact, RunFiles(root).edge(0, "deployed"))
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], url: str, log: Path, threads: int) -> subprocess.Popen:
    pinned = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env = {**os.environ, "BAIM_QUIET": "1", **pinned}
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "baim.cli", *args], env=env, stdout=fh, stderr=fh)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError(f"{args[:2]} exited: {log.read_text()[-2000:]}")
    proc.kill()
    raise RuntimeError(f"{args[:2]} did not start within 120 s")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


async def request(c: httpx.AsyncClient, task: str, seed: int) -> tuple[float, httpx.Response]:
    t0 = time.perf_counter()
    r = await c.post("/v1/generate", json={"task": task, "n": N, "seed": seed, "format": "npy"})
    dt = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise RuntimeError(f"{task}: {r.status_code} {r.text[:200]}")
    return dt, r


async def drive(edge_url: str, names: list[str], args: argparse.Namespace, own_model_dir: Path) -> dict:
    out: dict = {}
    async with httpx.AsyncClient(base_url=edge_url, timeout=120) as c:
        # cold start: the first request after the process is up loads the model from disk
        out["first_request_ms"] = (await request(c, names[0], 0))[0]
        # hits: the edge's own model
        for i in range(5):
            await request(c, names[0], i)
        hits = [(await request(c, names[0], i))[0] for i in range(args.requests)]
        # misses: drop, then fetch + verify + store + load, every time
        misses = []
        for i in range(args.misses):
            await c.delete(f"/v1/toolbox/{names[1]}")
            dt, r = await request(c, names[1], i)
            assert r.headers["x-baim-toolbox"] == "miss", r.headers
            misses.append(dt)
        out.update(
            hit_p50_ms=pct(hits, 50),
            hit_p99_ms=pct(hits, 99),
            miss_p50_ms=pct(misses, 50),
            miss_p99_ms=pct(misses, 99),
        )
        out["miss_hit_ratio"] = out["miss_p50_ms"] / out["hit_p50_ms"]

        # throughput on memory hits against raw forwards of the same model in this process,
        # both driven by --concurrency clients with one forward at a time in a worker thread
        # (as the edge runs them), in alternating blocks so that a change in machine load hits
        # both sides alike
        sem = asyncio.Semaphore(args.concurrency)

        async def one(i: int) -> None:
            async with sem:
                await request(c, names[0], i)

        model = load_model(own_model_dir, "compact")
        forward_slot = asyncio.Semaphore(1)

        def forward(i: int) -> None:
            to_uint8(generate(model, N, i))

        async def raw_one(i: int) -> None:
            async with sem, forward_slot:
                await asyncio.to_thread(forward, i)

        for i in range(5):
            await raw_one(i)
        block = max(1, args.requests // 4)
        service_s = raw_s = 0.0
        for _ in range(4):
            t0 = time.perf_counter()
            await asyncio.gather(*[one(i) for i in range(block)])
            service_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            await asyncio.gather(*[raw_one(i) for i in range(block)])
            raw_s += time.perf_counter() - t0
        service_rps, raw_rps = 4 * block / service_s, 4 * block / raw_s
        out.update(service_rps=service_rps, raw_rps=raw_rps, throughput_ratio=service_rps / raw_rps)
    return out


async def zipf_mix(edge_url: str, names: list[str], args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    weights = 1.0 / np.arange(1, len(names) + 1) ** args.zipf
    picks = rng.choice(len(names), size=args.zipf_requests, p=weights / weights.sum())
    async with httpx.AsyncClient(base_url=edge_url, timeout=120) as c:
        before = (await c.get("/v1/toolbox")).json()
        where = {"memory": 0, "disk": 0, "miss": 0}
        for i, k in enumerate(picks):
            where[(await request(c, names[int(k)], i))[1].headers["x-baim-toolbox"]] += 1
        after = (await c.get("/v1/toolbox")).json()
    counted = {k: after[f"{k}_hits"] - before[f"{k}_hits"] for k in ("memory", "disk")}
    if counted != {k: where[k] for k in counted}:
        raise RuntimeError(f"the toolbox counted {counted}, the replies said {where}")
    return {
        "memory_hit_ratio": where["memory"] / len(picks),
        "disk_hit_ratio": where["disk"] / len(picks),
        "miss_ratio": where["miss"] / len(picks),
        "zipf_fetches": after["fetches"],
    }


async def cycles(edge_url: str, names: list[str], pid: int, n: int) -> dict:
    """Two tasks alternating through a one-model budget: every request evicts one model and
    loads the other from disk. RSS is sampled every 10 cycles."""
    async with httpx.AsyncClient(base_url=edge_url, timeout=120) as c:
        before = (await c.get("/v1/toolbox")).json()
        rss = []
        for i in range(n):
            await request(c, names[2 + (i % 2)], i)
            if (i + 1) % 10 == 0:
                rss.append(rss_bytes(pid))
        state = (await c.get("/v1/toolbox")).json()
    evictions = state["evictions"] - before["evictions"]
    if evictions < n - 2:
        raise RuntimeError(f"only {evictions} evictions in {n} cycles: the budget holds both models")
    return {
        "rss_after_10_mb": rss[0] / 2**20,
        f"rss_after_{n}_mb": rss[-1] / 2**20,
        "rss_samples_mb": [round(r / 2**20, 1) for r in rss],
        "cycle_rss_growth": (rss[-1] - rss[0]) / rss[0],
        "cycle_evictions": evictions,
    }


def chunked_attack(edge_url: str, pid: int, mib: int = 400) -> dict:
    """A ``POST /v1/generate`` with ``mib`` MiB of chunked padding (no Content-Length), sent
    as fast as the edge takes it, while the edge's RSS is sampled every 20 ms."""
    host, port = edge_url.removeprefix("http://").split(":")
    before = rss_bytes(pid)
    samples, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(rss_bytes(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    chunk = b"%x\r\n" % (1 << 20) + b" " * (1 << 20) + b"\r\n"
    sent, reply = 0, b""
    t0 = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n")
        s.sendall(b'Transfer-Encoding: chunked\r\n\r\n%x\r\n{"task": "x", "pad": "\r\n' % 22)
        while sent < mib << 20:
            if select.select([s], [], [], 0)[0]:
                break
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1 << 20
        deadline = time.monotonic() + 30
        while not reply and time.monotonic() < deadline:
            if select.select([s], [], [], 0.5)[0]:
                reply = s.recv(4096)
    elapsed = time.perf_counter() - t0
    time.sleep(0.5)
    done.set()
    sampler.join()
    samples.append(rss_bytes(pid))
    status = reply.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    return {
        "attack_status": status,
        "attack_sent_mib": sent / 2**20,
        "attack_s": elapsed,
        "rss_before_attack_mb": before / 2**20,
        "rss_peak_attack_mb": max(samples) / 2**20,
        "rss_growth": (max(samples) - before) / before,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=6)
    ap.add_argument("--requests", type=int, default=160, help="requests per latency/throughput phase")
    ap.add_argument("--misses", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads, in the edge and here")
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--zipf-requests", type=int, default=300)
    ap.add_argument("--budget-models", type=int, default=3)
    ap.add_argument("--cycles", type=int, default=60)
    ap.add_argument("--attack-mib", type=int, default=400, help="chunked body sent in the attack phase")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="baim-service-bench-") as tmp:
        run = Path(tmp) / "run"
        t0 = time.perf_counter()
        names = build_run(run, args.tasks, args.seed)
        registry = Registry(RunFiles(run).registry)
        registry.publish_run(run)
        token_file = Path(tmp) / "token"
        token_file.write_text(registry.issue_token("bench"))
        file_bytes = sum(e.bytes for e in registry.entries()) / len(names)
        built = time.perf_counter() - t0
        print(f"{len(names)} compact models, {file_bytes / 2**20:.1f} MiB each on average (built in {built:.0f} s)")

        cloud_port = free_port()
        cloud_url = f"http://127.0.0.1:{cloud_port}"
        procs = [
            start(
                ["serve", "cloud", "--run", str(run), "--port", str(cloud_port)],
                cloud_url,
                Path(tmp) / "cloud.log",
                args.threads,
            )
        ]
        try:

            def edge(budget_mb: float, sub: str) -> tuple[subprocess.Popen, str]:
                # a fresh toolbox per phase: its own copy of the edge folder
                edge_run = Path(tmp) / sub
                RunFiles(edge_run).edge(0).mkdir(parents=True)
                os.symlink(RunFiles(run).edge(0, "deployed"), RunFiles(edge_run).edge(0, "deployed"))
                port = free_port()
                key = str(RunFiles(run).registry / "registry.pub")
                cmd = ["serve", "edge", "--run", str(edge_run), "--edge", "0", "--cloud", cloud_url]
                cmd += ["--token-file", str(token_file), "--port", str(port), "--toolbox-mb", str(budget_mb)]
                cmd += ["--registry-key", key, "--rate", "1000000"]  # one client here: no rate limit
                procs.append(start(cmd, f"http://127.0.0.1:{port}", Path(tmp) / f"{sub}.log", args.threads))
                return procs[-1], f"http://127.0.0.1:{port}"

            mem_model = max(model_bytes(load_model(RunFiles(run).compact(t))) for t in names)
            t0 = time.perf_counter()
            proc, url = edge(4096, "edge-a")
            started = time.perf_counter() - t0
            figures = asyncio.run(drive(url, names, args, RunFiles(run).edge(0, "deployed")))
            figures["edge_start_s"] = started
            figures.update(chunked_attack(url, proc.pid, args.attack_mib))
            proc.terminate()
            proc, url = edge(args.budget_models * 1.1 * mem_model / 2**20, "edge-b")
            figures.update(asyncio.run(zipf_mix(url, names, args)))
            proc.terminate()
            proc, url = edge(1.5 * mem_model / 2**20, "edge-c")
            figures.update(asyncio.run(cycles(url, names, proc.pid, args.cycles)))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()

    figures.update(
        tasks=len(names),
        model_mib=file_bytes / 2**20,
        images_per_request=N,
        requests=args.requests,
        misses=args.misses,
        concurrency=args.concurrency,
        threads=args.threads,
        zipf_s=args.zipf,
        budget_models=args.budget_models,
        cycles=args.cycles,
        cpu_count=os.cpu_count(),
    )
    for k, v in figures.items():
        print(f"{k:>22}: {v:.3f}" if isinstance(v, float) else f"{k:>22}: {v}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
