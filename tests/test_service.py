"""The GenAI service: the cloud registry and an edge's toolbox, over real HTTP on 127.0.0.1.

The run directory here is built directly (three tasks of small learners, fused and partitioned)
so that every path of the service is exercised in seconds; ``test_service_page.py`` drives the
web page in a real browser.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from baim.cli import main
from baim.cloud.registry import Registry, signed_payload
from baim.edge.toolbox import Signed, ToolboxError, ToolboxStore
from baim.models import load_model, save_model
from baim.service.cloud_app import create_cloud_app
from baim.service.edge_app import create_edge_app
from baim.service.http import BackgroundServer
from baim.service.serve import edge_toolbox
from baim.signing import verify
from conftest import SERVICE_TASKS, published_registry
from conftest import compact_models as _compacts

TASKS = SERVICE_TASKS
ADMIN = {"X-Baim-Admin": "1"}


@pytest.fixture()
def cloud(run_dir: Path):
    registry, token = published_registry(run_dir)
    server = BackgroundServer(create_cloud_app(registry))
    url = server.start()
    yield registry, url, token, server
    server.stop()


def _edge(run_dir: Path, url: str | None, token: str | None, budget_mb: float = 64.0, transport=None):
    async def build():
        tb = await edge_toolbox(run_dir, 0, url, token, budget_mb, transport=transport)
        return tb, create_edge_app(tb, "edge-0")

    return build


async def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge", timeout=60)


def gen(client: httpx.AsyncClient, task: str, n: int = 16, **kw):
    return client.post("/v1/generate", json={"task": task, "n": n, "format": kw.pop("format", "npy"), **kw})


# -- registry --------------------------------------------------------------------------------


def test_registry_publishes_signed_versions_and_keeps_tokens_hashed(run_dir: Path):
    registry = Registry(run_dir / "registry")
    first = registry.publish_run(run_dir)
    assert [e.version for e in first] == [1, 1, 1]
    assert registry.publish_run(run_dir) == first  # idempotent: the same models are not new versions
    for e in first:
        payload = signed_payload(e.task, e.version, registry.manifest(e), e.counter, e.created)
        assert verify(registry.public_key, payload, bytes.fromhex(e.signature))
        sig = bytes.fromhex(e.signature)  # bound to its version and counter: not valid for another
        other = signed_payload(e.task, e.version + 1, registry.manifest(e), e.counter, e.created)
        assert not verify(registry.public_key, other, sig)
        older = signed_payload(e.task, e.version, registry.manifest(e), e.counter - 1, e.created)
        assert not verify(registry.public_key, older, sig)
    assert sorted(e.counter for e in first) == [1, 2, 3]  # one registry-wide publication counter
    newer = _compacts(seed=1)[1]
    save_model(newer, run_dir / "cloud" / "compact" / "trousers")
    v2 = registry.publish(run_dir / "cloud" / "compact" / "trousers")
    assert (v2.version, v2.counter) == (2, 4)
    assert registry.latest("trousers").version == 2 and len(registry.entries()) == 3
    token = registry.issue_token("alice")
    assert registry.client_of(token) == "alice" and registry.client_of(token + "x") is None
    raw = (run_dir / "registry" / "registry.db").read_bytes()
    assert token.encode() not in raw  # only its sha256 is stored


def test_cloud_api_needs_a_token_and_serves_weights_with_etag(cloud):
    registry, url, token, _ = cloud
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/healthz").json()["models"] == 3
        for path in ("/v1/models", "/v1/models/tops", "/v1/models/tops/weights", "/metrics"):
            r = c.get(path)
            assert r.status_code == 401 and "token" in r.json()["error"]
            assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert sorted(m["task"] for m in c.get("/v1/models", headers=auth).json()["models"]) == sorted(TASKS)
        r = c.get("/v1/models/shoes", headers=auth)
        assert r.status_code == 404 and r.json()["known_tasks"] == sorted(TASKS)
        entry = c.get("/v1/models/tops", headers=auth).json()
        assert entry["version"] == 1 and entry["manifest"]["task"] == "tops"
        w = c.get("/v1/models/tops/weights", headers=auth)
        assert w.status_code == 200 and w.headers["etag"] == f'"{entry["sha256"]}"'
        assert w.content == registry.weights_path(registry.latest("tops")).read_bytes()
        again = c.get("/v1/models/tops/weights", headers={**auth, "If-None-Match": w.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        part = c.get("/v1/models/tops/weights", headers={**auth, "Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == w.content[100:200]
        metrics = c.get("/metrics", headers=auth).text
        assert 'baim_registry_requests_total{path="/v1/models/{task}/weights",status="200"}' in metrics


# -- edge: hits, misses, single flight, LRU -------------------------------------------------------


def test_edge_hit_on_its_own_model_and_miss_then_hit_for_another_task(run_dir: Path, cloud):
    _, url, token, _ = cloud

    async def scenario():
        tb, app = await _edge(run_dir, url, token)()
        async with await _client(app) as c:
            r = await gen(c, "tops", seed=3)
            assert r.status_code == 200
            assert (r.headers["x-baim-toolbox"], r.headers["x-baim-model"]) == ("disk", "tops@own")  # first load
            images = np.load(io.BytesIO(r.content))
            assert images.shape == (16, 1, 32, 32) and images.dtype == np.uint8
            assert (await gen(c, "tops", seed=3)).content == r.content  # same seed, same images
            r = await gen(c, "bags", n=4, format="png")
            assert (r.headers["x-baim-toolbox"], r.headers["x-baim-model"]) == ("miss", "bags@1")
            assert Image.open(io.BytesIO(r.content)).format == "PNG"
            r = await gen(c, "bags", n=4)
            assert r.headers["x-baim-toolbox"] == "memory"
            state = (await c.get("/v1/toolbox")).json()
            assert (state["memory_hits"], state["disk_hits"], state["misses"], state["fetches"]) == (2, 1, 1, 1)
            assert sorted(m["model"] for m in state["on_disk"]) == ["bags@1", "tops@own"]
            assert (await c.delete("/v1/toolbox/bags")).json()["dropped"] == ["bags@1"]
            assert (await c.delete("/v1/toolbox/tops")).json()["dropped"] == []  # its own model stays
            assert (await gen(c, "bags", n=1)).headers["x-baim-toolbox"] == "miss"

    asyncio.run(scenario())


def test_sixteen_concurrent_misses_fetch_once_and_other_tasks_do_not_wait(run_dir: Path, cloud):
    _, url, token, _ = cloud

    class HeldBags(httpx.AsyncBaseTransport):
        """The registry as seen through a link that holds bags' weights back until trousers'
        reply has arrived: a miss that waited behind bags would never finish."""

        def __init__(self):
            self.inner = httpx.AsyncHTTPTransport()
            self.weights_requests: list[str] = []
            self.trousers_done = asyncio.Event()

        async def handle_async_request(self, request):
            if request.url.path.endswith("/weights"):
                self.weights_requests.append(request.url.path)
                if "/bags/" in request.url.path:
                    await asyncio.wait_for(self.trousers_done.wait(), timeout=60)
            return await self.inner.handle_async_request(request)

    async def scenario():
        transport = HeldBags()
        tb, app = await _edge(run_dir, url, token, transport=transport)()

        async def trousers():
            r = await gen(c, "trousers", n=2)
            transport.trousers_done.set()
            return r

        async with await _client(app) as c:
            replies = await asyncio.gather(*[gen(c, "bags", n=2) for _ in range(16)], trousers())
        assert all(r.status_code == 200 for r in replies)
        assert transport.weights_requests.count("/v1/models/bags/weights") == 1  # single flight
        assert [r.headers["x-baim-toolbox"] for r in replies[:16]] == ["miss"] * 16
        assert tb.stats.fetches == 2 and tb.stats.misses == 17

    asyncio.run(scenario())


def test_lru_eviction_under_a_byte_budget(run_dir: Path, cloud):
    _, url, token, _ = cloud
    one = sum(
        t.numel() * t.element_size() for t in load_model(run_dir / "cloud" / "compact" / "tops").state_dict().values()
    )

    async def scenario():
        tb, app = await _edge(run_dir, url, token, budget_mb=2.5 * one / (1 << 20))()  # room for two models
        async with await _client(app) as c:
            for task in ("tops", "trousers", "bags"):
                assert (await gen(c, task, n=1)).status_code == 200
            assert [x.held.task for x in tb.memory.values()] == ["trousers", "bags"]
            assert tb.stats.evictions == 1 and tb.memory_bytes <= tb.budget
            r = await gen(c, "tops", n=1)  # evicted from memory, still on disk: no fetch
            assert r.headers["x-baim-toolbox"] == "disk" and tb.stats.fetches == 2
            assert [x.held.task for x in tb.memory.values()] == ["bags", "tops"]
            await gen(c, "bags", n=1)  # recently used moves to the end
            await gen(c, "trousers", n=1)
            assert [x.held.task for x in tb.memory.values()] == ["bags", "trousers"]

    asyncio.run(scenario())


# -- verification: tampered, unsigned, wrong key --------------------------------------------------


def test_tampered_weights_and_wrong_signature_are_refused_and_the_old_version_served(run_dir: Path, cloud):
    registry, url, token, _ = cloud

    async def scenario():
        tb, app = await _edge(run_dir, url, token)()
        async with await _client(app) as c:
            assert (await gen(c, "bags", n=2)).headers["x-baim-model"] == "bags@1"
            # a new version whose weights are altered after signing
            save_model(_compacts(seed=2)[2], run_dir / "cloud" / "compact" / "bags")
            v2 = registry.publish(run_dir / "cloud" / "compact" / "bags")
            data = bytearray(registry.weights_path(v2).read_bytes())
            data[-5] ^= 0xFF
            registry.weights_path(v2).write_bytes(bytes(data))
            out = (await c.post("/v1/toolbox/refresh", params={"task": "bags"}, headers=ADMIN)).json()
            assert out["updated"] is False and "sha256" in out["reason"] and out["serving"] == "bags@1"
            assert (await gen(c, "bags", n=2)).headers["x-baim-model"] == "bags@1"
            assert not (tb.store.root / "bags" / "2").exists()  # never cached
            # a version with intact weights but a signature that is not the registry's
            save_model(_compacts(seed=3)[2], run_dir / "cloud" / "compact" / "bags")
            v3 = registry.publish(run_dir / "cloud" / "compact" / "bags")
            with sqlite3.connect(registry.root / "registry.db") as db:
                db.execute("UPDATE models SET signature = ? WHERE version = ?", ("ab" * 64, v3.version))
            out = (await c.post("/v1/toolbox/refresh", params={"task": "bags"}, headers=ADMIN)).json()
            assert out["updated"] is False and "signature" in out["reason"]
            assert (await gen(c, "bags", n=2)).headers["x-baim-model"] == "bags@1"
            assert tb.stats.refused == 2
            # the registry re-signs v3 correctly: the refresh now switches
            with sqlite3.connect(registry.root / "registry.db") as db:
                db.execute("UPDATE models SET signature = ? WHERE version = ?", (v3.signature, v3.version))
            out = (await c.post("/v1/toolbox/refresh", params={"task": "bags"}, headers=ADMIN)).json()
            assert out["updated"] is True and out["serving"] == "bags@3"
            assert (await gen(c, "bags", n=2)).headers["x-baim-model"] == "bags@3"

    asyncio.run(scenario())


def test_a_tampered_first_fetch_is_a_clear_error_and_leaves_nothing(run_dir: Path, cloud):
    registry, url, token, _ = cloud
    path = registry.weights_path(registry.latest("trousers"))
    data = bytearray(path.read_bytes())
    data[200] ^= 0x01
    path.write_bytes(bytes(data))

    async def scenario():
        tb, app = await _edge(run_dir, url, token)()
        async with await _client(app) as c:
            r = await gen(c, "trousers", n=2)
        assert r.status_code == 502 and "refused" in r.json()["error"]
        assert not (tb.store.root / "trousers").exists()

    asyncio.run(scenario())


def test_toolbox_store_refuses_a_model_signed_by_another_key(run_dir: Path, tmp_path: Path):
    registry = Registry(run_dir / "registry")
    entry = registry.publish_run(run_dir)[0]
    other = Registry(tmp_path / "other")
    store = ToolboxStore(tmp_path / "toolbox", other.public_key)
    manifest = registry.manifest(entry)
    weights = registry.weights_path(entry).read_bytes()
    with pytest.raises(ToolboxError, match="signature"):
        store.add_fetched(entry.task, Signed.of(entry.to_dict()), manifest, weights)
    with pytest.raises(ToolboxError, match="not the compact model"):  # a valid model passed off as another task
        store.add_fetched(next(t for t in TASKS if t != entry.task), Signed.of(entry.to_dict()), manifest, weights)
    with pytest.raises(ToolboxError, match="pins registry key"):
        ToolboxStore(tmp_path / "toolbox", registry.public_key)  # a pinned key does not silently change
    assert store.held() == []


# -- outages and bad requests -------------------------------------------------------------------


def test_cloud_down_hits_still_served_and_misses_get_503(run_dir: Path, cloud):
    _, url, token, server = cloud

    async def scenario():
        tb, app = await _edge(run_dir, url, token)()
        async with await _client(app) as c:
            assert (await gen(c, "bags", n=1)).status_code == 200  # fetched while the cloud is up
            server.stop()
            assert (await gen(c, "tops", n=1)).headers["x-baim-toolbox"] == "disk"
            assert (await gen(c, "bags", n=1)).headers["x-baim-toolbox"] == "memory"
            r = await gen(c, "trousers", n=1)
            assert r.status_code == 503
            assert "cannot be reached" in r.json()["error"] and r.json()["toolbox"] == ["bags", "tops"]
            assert (await c.get("/v1/tasks")).json()["cloud"] == sorted(TASKS)  # the catalogue read 1 s ago
            tb.catalogue = None  # once it is stale, the cloud's list is unknown
            assert (await c.get("/v1/tasks")).json() == {
                "toolbox": ["bags", "tops"],
                "cloud": None,
                "tasks": ["bags", "tops"],
            }
            server.start()  # back on the same port: the miss is served
            assert (await gen(c, "trousers", n=1)).headers["x-baim-toolbox"] == "miss"

    asyncio.run(scenario())


def test_bad_requests_get_json_errors_that_say_the_limit(run_dir: Path, cloud):
    _, url, token, _ = cloud

    async def scenario():
        tb, app = await _edge(run_dir, url, token)()
        async with await _client(app) as c:
            for n in (0, 257):
                r = await gen(c, "tops", n=n)
                assert r.status_code == 422 and "n:" in r.json()["error"] and "256" in r.json()["error"]
            r = await gen(c, "shoes")
            assert r.status_code == 404 and r.json()["known_tasks"] == sorted(TASKS)
            r = await c.post("/v1/generate", content=b"{not json", headers={"content-type": "application/json"})
            assert r.status_code == 422 and "error" in r.json()
            r = await c.post("/v1/generate", json={"task": "tops", "format": "gif"})
            assert r.status_code == 422 and "format" in r.json()["error"]
            files = {"files": ("x.png", b"definitely not a png", "image/png")}
            r = await c.post("/v1/reconstruct", data={"task": "tops"}, files=files)
            assert r.status_code == 422 and "x.png" in r.json()["error"]
            bad = io.BytesIO()
            np.save(bad, np.zeros((2, 28, 28), dtype=np.uint8))
            r = await c.post("/v1/reconstruct", data={"task": "tops"}, files={"files": ("x.npy", bad.getvalue())})
            assert r.status_code == 422 and "H = W = 32" in r.json()["error"]
            r = await c.post("/v1/reconstruct", data={"task": "tops"})
            assert r.status_code == 422 and "files" in r.json()["error"]

    asyncio.run(scenario())


def test_reconstruct_returns_the_users_images_through_the_model(run_dir: Path, cloud):
    _, url, token, _ = cloud
    img = Image.fromarray((np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8), "L")
    png = io.BytesIO()
    img.save(png, format="PNG")
    arr = io.BytesIO()
    np.save(arr, np.random.default_rng(1).integers(0, 255, (3, 1, 32, 32), dtype=np.uint8))

    async def scenario():
        tb, app = await _edge(run_dir, url, token)()
        async with await _client(app) as c:
            r = await c.post(
                "/v1/reconstruct",
                data={"task": "tops", "format": "npy"},
                files=[("files", ("a.png", png.getvalue(), "image/png")), ("files", ("b.npy", arr.getvalue()))],
            )
            assert r.status_code == 200 and r.headers["x-baim-toolbox"] == "disk"
            out = np.load(io.BytesIO(r.content))
            assert out.shape == (4, 1, 32, 32) and float(r.headers["x-baim-mse"]) > 0
            r = await c.post("/v1/reconstruct", data={"task": "bags"}, files={"files": ("a.png", png.getvalue())})
            assert r.status_code == 200 and r.headers["x-baim-toolbox"] == "miss"
            assert Image.open(io.BytesIO(r.content)).format == "PNG"

    asyncio.run(scenario())


def test_edge_metrics_and_healthz(run_dir: Path, cloud):
    _, url, token, _ = cloud

    async def scenario():
        tb, app = await _edge(run_dir, url, token)()
        async with await _client(app) as c:
            await gen(c, "tops", n=1)
            assert (await c.get("/healthz")).json()["status"] == "ok"
            text = (await c.get("/metrics")).text
            assert 'baim_edge_requests_total{path="/v1/generate",status="200"} 1.0' in text
            page = (await c.get("/")).text
            assert "edge-0" in page and "/v1/generate" in page

    asyncio.run(scenario())


# -- command line: token, pull, generate, HTTPS -----------------------------------------------------


def test_cli_token_pull_and_generate(run_dir: Path, cloud, tmp_path: Path, capsys):
    registry, url, _, _ = cloud
    assert main(["serve", "token", "--run", str(run_dir), "--name", "laptop"]) == 0
    token = capsys.readouterr().out.strip()
    assert registry.client_of(token) == "laptop"
    (tmp_path / "token").write_text(token + "\n")
    key = run_dir / "registry" / "registry.pub"
    out = tmp_path / "pulled"
    args = ["--cloud", url, "--token-file", str(tmp_path / "token"), "--registry-key", str(key)]
    assert main(["pull", *args, "--task", "bags", "--out", str(out)]) == 0
    pulled = json.loads(capsys.readouterr().out)
    assert pulled["version"] == 1 and load_model(out, "compact").task_names == ["bags"]
    assert main(["generate", "--model", str(out), "--n", "9", "--out", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").size[0] > 32
    assert main(["pull", *args, "--task", "shoes", "--out", str(tmp_path / "x")]) == 2
    assert "known tasks" in capsys.readouterr().out
    (tmp_path / "bad").write_text("nope\n")
    bad = ["--cloud", url, "--token-file", str(tmp_path / "bad"), "--task", "bags", "--out", str(tmp_path / "y")]
    assert main(["pull", *bad, "--registry-key", str(key)]) == 2
    assert "refused this client's token" in capsys.readouterr().out
    keyless = ["--cloud", url, "--token-file", str(tmp_path / "token"), "--task", "bags", "--out", str(tmp_path / "y")]
    assert main(["pull", *keyless]) == 2  # no key and no --trust-on-first-use: refused, not trusted
    assert "--trust-on-first-use" in capsys.readouterr().out
    assert not (tmp_path / "y").exists() and not (tmp_path / "x").exists()


def test_registry_and_edge_over_https_with_the_deployment_ca(run_dir: Path, tmp_path: Path):
    from baim.federation.deploy import issue_server_cert, make_credentials

    creds = tmp_path / "creds"
    make_credentials(creds, nodes=0)
    cert = issue_server_cert(creds, "registry", ["127.0.0.1"])
    registry = Registry(run_dir / "registry")
    registry.publish_run(run_dir)
    token = registry.issue_token("edge-0")
    with BackgroundServer(create_cloud_app(registry), tls_cert=cert["cert"], tls_key=cert["key"]) as url:
        assert url.startswith("https://")

        async def scenario():
            tb = await edge_toolbox(run_dir, 0, url, token, ca_file=cert["ca"])
            async with await _client(create_edge_app(tb, "edge-0")) as c:
                assert (await gen(c, "trousers", n=1)).headers["x-baim-toolbox"] == "miss"
            with pytest.raises(httpx.ConnectError):  # without the CA the registry is not trusted
                async with httpx.AsyncClient() as plain:
                    await plain.get(url + "/healthz")

        asyncio.run(scenario())


@pytest.mark.integration
def test_a_finished_run_is_served_as_is(tmp_path: Path):
    """`baim run` leaves each edge's toolbox holding its own model; the registry publishes the
    run's compact models; an edge serves its own task as a hit and another task as a miss."""
    from baim import engines
    from baim.config import RunConfig
    from baim.service.serve import open_registry

    summary = engines.run(tmp_path, RunConfig(preset="smoke", strategies=("finetune",)))
    edge = summary["edges"][0]
    own = tmp_path / "edges" / "edge-0" / "toolbox" / edge["task"] / "own"
    assert (own / "entry.json").is_file()
    assert (own / "manifest.json").read_bytes() == (tmp_path / "edges/edge-0/personalized/manifest.json").read_bytes()
    registry = open_registry(tmp_path)
    tasks = sorted({e["task"] for e in summary["edges"]})
    assert sorted(registry.tasks()) == tasks
    other = next(t for t in tasks if t != edge["task"])
    with BackgroundServer(create_cloud_app(registry)) as url:

        async def scenario():
            tb, app = await _edge(tmp_path, url, registry.issue_token("edge-0"))()
            async with await _client(app) as c:
                r = await gen(c, edge["task"], n=4)
                assert (r.headers["x-baim-toolbox"], r.headers["x-baim-model"]) == ("disk", f"{edge['task']}@own")
                r = await gen(c, other, n=4)
                assert (r.headers["x-baim-toolbox"], r.headers["x-baim-model"]) == ("miss", f"{other}@1")
                assert np.load(io.BytesIO(r.content)).std() > 0  # trained models draw varied images

        asyncio.run(scenario())


def test_published_versions_reach_an_edge_that_refreshes(run_dir: Path, cloud, capsys):
    """`baim serve publish` adds a version to a running registry; an edge started with a
    refresh interval switches to it by itself."""
    registry, url, token, _ = cloud
    toolbox = asyncio.run(edge_toolbox(run_dir, 0, url, token))
    with BackgroundServer(create_edge_app(toolbox, "edge-0", refresh_s=0.2)) as edge_url:
        with httpx.Client(base_url=edge_url, timeout=60) as c:
            r = c.post("/v1/generate", json={"task": "bags", "n": 1})
            assert r.headers["x-baim-model"] == "bags@1"
            save_model(_compacts(seed=4)[2], run_dir / "cloud" / "compact" / "bags")
            assert main(["serve", "publish", "--run", str(run_dir)]) == 0
            published = json.loads(capsys.readouterr().out)
            assert {(p["task"], p["version"]) for p in published} == {("tops", 1), ("trousers", 1), ("bags", 2)}
            for _ in range(100):
                if c.post("/v1/generate", json={"task": "bags", "n": 1}).headers["x-baim-model"] == "bags@2":
                    break
                time.sleep(0.1)
            else:
                raise AssertionError("the edge did not switch to bags@2 within 10 s")
            assert c.post("/v1/generate", json={"task": "tops", "n": 1}).headers["x-baim-model"] == "tops@own"


def test_a_failed_fetch_fails_its_waiters_once_and_a_retry_succeeds(run_dir: Path, cloud):
    _, url, token, server = cloud

    async def scenario():
        tb, app = await _edge(run_dir, url, token)()
        async with await _client(app) as c:
            server.stop()
            replies = await asyncio.gather(*[gen(c, "bags", n=1) for _ in range(16)])
            assert [r.status_code for r in replies] == [503] * 16 and tb.flights == {}
            server.start()
            r = await gen(c, "bags", n=1)
            assert r.status_code == 200 and r.headers["x-baim-toolbox"] == "miss" and tb.stats.fetches == 1

    asyncio.run(scenario())


def test_bad_task_names_empty_uploads_and_oversized_bodies_are_4xx(run_dir: Path, cloud):
    _, url, token, _ = cloud
    empty = io.BytesIO()
    np.save(empty, np.zeros((0, 32, 32), dtype=np.uint8))

    async def scenario():
        tb, app = await _edge(run_dir, url, token)()
        async with await _client(app) as c:
            for task in ("../models", "bags/weights", "a\x00b", ".hidden", "x" * 200):
                r = await gen(c, task)
                assert r.status_code == 422 and "task name" in r.json()["error"], task
            r = await c.post("/v1/toolbox/refresh", params={"task": "../x"}, headers=ADMIN)
            assert r.status_code == 422
            for name, data in (("e.npy", b""), ("z.npy", empty.getvalue()), ("t.png", b"\x89PNG\r\n\x1a\n")):
                r = await c.post("/v1/reconstruct", data={"task": "tops"}, files={"files": (name, data)})
                assert r.status_code == 422 and name in r.json()["error"], name
            r = await c.post("/v1/generate", content=b"{" + b" " * (70 << 10) + b"}")
            assert r.status_code == 413 and "limit" in r.json()["error"]
        other = httpx.ASGITransport(app=app, client=("10.1.2.3", 5000))  # not the edge machine
        async with httpx.AsyncClient(transport=other, base_url="http://edge") as c:
            assert (await c.delete("/v1/toolbox/bags")).status_code == 403
            assert (await c.post("/v1/toolbox/refresh", params={"task": "bags"}, headers=ADMIN)).status_code == 403
            assert (await gen(c, "tops", n=1)).status_code == 200  # users may generate from anywhere
        assert [h.label for h in tb.store.held()] == ["tops@own"]  # no bad request left anything behind

    asyncio.run(scenario())
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.get("/v1/models/tops", params={"version": 10**20}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 422


def test_a_corrupt_fetched_model_on_disk_is_fetched_again_and_a_too_big_one_served_not_kept(run_dir: Path, cloud):
    _, url, token, _ = cloud

    async def scenario():
        tb, app = await _edge(run_dir, url, token)()
        async with await _client(app) as c:
            assert (await gen(c, "bags", n=1)).headers["x-baim-toolbox"] == "miss"
            weights = tb.store.root / "bags" / "1" / "weights.safetensors"
            weights.write_bytes(weights.read_bytes()[:-10])  # truncated at rest
            tb.memory.clear()
            r = await gen(c, "bags", n=1)
            assert r.status_code == 200 and r.headers["x-baim-toolbox"] == "miss" and tb.stats.fetches == 2
            tb.budget = 1000  # smaller than any model
            tb.memory.clear()
            r = await gen(c, "trousers", n=1)
            assert r.status_code == 200 and "trousers" not in tb.memory and tb.memory_bytes == 0

    asyncio.run(scenario())


def test_an_edge_without_a_key_refuses_misses_unless_told_to_trust_on_first_use(tmp_path: Path, run_dir: Path):
    """No --registry-key and no run registry on the edge's machine: misses are refused (the
    default is safe); with --trust-on-first-use the edge starts without the cloud, then trusts
    and pins the registry's key on its first miss (served by uvicorn)."""
    registry = Registry(tmp_path / "cloud-side")
    registry.publish_run(run_dir)
    token = registry.issue_token("edge-0")
    edge_run = tmp_path / "edge-side"
    (edge_run / "edges").mkdir(parents=True)
    shutil.copytree(run_dir / "edges" / "edge-0", edge_run / "edges" / "edge-0")
    with BackgroundServer(create_cloud_app(registry)) as cloud_url:

        async def untrusting():
            tb = await edge_toolbox(edge_run, 0, cloud_url, token)
            async with await _client(create_edge_app(tb, "edge-0")) as c:
                return await gen(c, "bags", n=1)

        r = asyncio.run(untrusting())
        assert r.status_code == 502 and "--registry-key" in r.json()["error"]
        toolbox = asyncio.run(edge_toolbox(edge_run, 0, cloud_url, token, trust_first_use=True))
        assert toolbox.store.public_key is None
        with BackgroundServer(create_edge_app(toolbox, "edge-0")) as edge_url, httpx.Client(base_url=edge_url) as c:
            r = c.post("/v1/generate", json={"task": "bags", "n": 1}, timeout=60)
            assert r.status_code == 200 and r.headers["x-baim-toolbox"] == "miss"
            assert c.post("/v1/generate", json={"task": "trousers", "n": 1}, timeout=60).status_code == 200
    pin = edge_run / "edges" / "edge-0" / "toolbox" / "registry.pub"
    assert pin.read_text().strip() == registry.public_key.hex()
    with pytest.raises(ToolboxError, match="pins registry key"):
        ToolboxStore(pin.parent, Registry(tmp_path / "impostor").public_key)


def test_a_pull_of_tampered_weights_leaves_nothing(run_dir: Path, cloud, tmp_path: Path, capsys):
    registry, url, token, _ = cloud
    path = registry.weights_path(registry.latest("bags"))
    data = bytearray(path.read_bytes())
    data[300] ^= 0x01
    path.write_bytes(bytes(data))
    (tmp_path / "token").write_text(token)
    out = tmp_path / "pulled"
    key = str(run_dir / "registry" / "registry.pub")
    args = ["pull", "--cloud", url, "--token-file", str(tmp_path / "token"), "--registry-key", key]
    assert main([*args, "--task", "bags", "--out", str(out)]) == 2
    assert "sha256" in capsys.readouterr().out
    assert not out.exists() and not list(tmp_path.glob(".pulled*"))
    assert main([*args, "--task", "tops", "--out", str(out)]) == 0
    assert main([*args, "--task", "trousers", "--out", str(out)]) == 2  # never mixed into an existing model
    assert "not empty" in capsys.readouterr().out and load_model(out).task_names == ["tops"]


def test_private_keys_are_never_readable_by_others_not_even_while_written(tmp_path: Path, monkeypatch):
    import os
    import stat

    import baim.atomic as atomic
    from baim.federation.deploy import make_credentials

    modes: dict[str, int] = {}
    real_fsync = atomic.os.fsync

    def spy(fd: int) -> None:  # the mode of each file at the moment its bytes are complete
        modes[os.readlink(f"/proc/self/fd/{fd}")] = stat.S_IMODE(os.fstat(fd).st_mode)
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", spy)
    make_credentials(tmp_path / "creds", nodes=1)
    registry = Registry(tmp_path / "registry")
    secret = re.compile(r"\.(ca\.key|server\.key|registry\.key|node-0)\.[^.]+\.tmp$")
    keys = {k: m for k, m in modes.items() if secret.search(k)}
    assert len(keys) == 4 and set(keys.values()) == {0o600}, modes
    assert stat.S_IMODE((registry.root / "registry.key").stat().st_mode) == 0o600
