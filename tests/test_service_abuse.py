"""The service under hostile traffic: bodies that lie about their size, uploads that never end,
decode bombs, random task names, anonymous callers, revoked and rotated tokens, rollbacks,
refreshes a web page would trigger, and the two guarantees a refactor could quietly drop (the
signature re-check on load, the shield around a shared fetch).

Each case below is a request that used to be served or to cost the edge unbounded work; the
bodies are produced lazily so a "400 MiB" request costs the test nothing but a counter.
"""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import select
import shutil
import socket
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from baim.cli import main
from baim.models import save_model
from baim.service.access import token_hash
from baim.service.cloud_app import create_cloud_app
from baim.service.edge_app import MAX_JSON_BYTES, create_edge_app
from baim.service.http import BackgroundServer
from baim.service.images import MAX_UPLOAD_BYTES
from baim.service.serve import edge_toolbox
from conftest import compact_models, published_registry

MiB = 1 << 20
ADMIN = {"X-Baim-Admin": "1"}


@pytest.fixture()
def cloud(run_dir: Path):
    registry, token = published_registry(run_dir)
    with BackgroundServer(create_cloud_app(registry)) as url:
        yield registry, url, token


def _client(app, host: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(host, 5000))
    return httpx.AsyncClient(transport=transport, base_url="http://edge", timeout=60)


class Pulled:
    """A lazy body: ``total`` bytes in 1 MiB chunks after ``head``, counting what the server
    took; past ``cap`` the server has already failed the test, which ends there (an edge
    without the limit would otherwise read, and hold, all of it)."""

    def __init__(self, head: bytes, total: int, cap: int = 16 * MiB):
        self.head, self.total, self.cap, self.sent = head, total, cap, 0

    async def __aiter__(self):
        yield self.head
        self.sent += len(self.head)
        chunk = b" " * MiB
        while self.sent < self.total:
            if self.sent > self.cap:
                raise AssertionError(f"the edge read {self.sent >> 20} MiB of a body past its limit")
            self.sent += len(chunk)
            yield chunk


# -- bytes actually received --------------------------------------------------------------------


def test_a_chunked_400_mib_generate_body_is_refused_after_the_json_limit(run_dir: Path):
    async def scenario():
        tb = await edge_toolbox(run_dir, 0, None, None)
        body = Pulled(b'{"task": "tops", "n": 1, "pad": "', 400 * MiB)
        async with _client(create_edge_app(tb, "edge-0")) as c:
            r = await c.post("/v1/generate", content=body, headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers  # chunked: no header to trust
        assert r.status_code == 413 and "limit" in r.json()["error"]
        assert body.sent <= MAX_JSON_BYTES + 2 * MiB  # reading stopped at the limit, not at 400 MiB

    asyncio.run(scenario())


def test_a_declared_length_over_the_limit_is_refused_before_reading(run_dir: Path):
    async def scenario():
        tb = await edge_toolbox(run_dir, 0, None, None)
        body = Pulled(b"{", 10 * MiB)
        async with _client(create_edge_app(tb, "edge-0")) as c:
            r = await c.post("/v1/generate", content=body, headers={"content-length": str(10 * MiB)})
        assert r.status_code == 413 and body.sent == 0

    asyncio.run(scenario())


def test_a_chunked_body_over_a_real_socket_gets_413_before_it_ends(run_dir: Path):
    tb = asyncio.run(edge_toolbox(run_dir, 0, None, None))
    with BackgroundServer(create_edge_app(tb, "edge-0")) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(
                b"POST /v1/generate HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"%x\r\n" % MiB + b" " * MiB + b"\r\n"
            sent, reply = 0, b""
            while sent < 200 * MiB and not reply:
                if select.select([s], [], [], 0)[0]:
                    reply = s.recv(4096)
                    break
                try:
                    s.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += MiB
            deadline = time.monotonic() + 10
            while not reply and time.monotonic() < deadline:
                if select.select([s], [], [], 0.5)[0]:
                    reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 200 * MiB


def test_a_chunked_200_mib_upload_stops_at_the_per_file_limit(run_dir: Path):
    head = (
        b'--B\r\nContent-Disposition: form-data; name="task"\r\n\r\ntops\r\n'
        b'--B\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )

    async def scenario():
        tb = await edge_toolbox(run_dir, 0, None, None)
        body = Pulled(head, 200 * MiB)
        async with _client(create_edge_app(tb, "edge-0")) as c:
            r = await c.post(
                "/v1/reconstruct", content=body, headers={"content-type": "multipart/form-data; boundary=B"}
            )
        assert r.status_code == 413 and "big.png" in r.json()["error"] and "per file" in r.json()["error"]
        assert body.sent <= MAX_UPLOAD_BYTES + 2 * MiB

    asyncio.run(scenario())


def test_64_blank_4096_pngs_are_refused_from_their_headers(run_dir: Path):
    png = io.BytesIO()
    Image.new("L", (4096, 4096)).save(png, format="PNG")
    files = [("files", (f"b{i}.png", png.getvalue(), "image/png")) for i in range(64)]
    assert sum(len(f[1][1]) for f in files) < 2 * MiB

    async def scenario():
        tb = await edge_toolbox(run_dir, 0, None, None)
        async with _client(create_edge_app(tb, "edge-0")) as c:
            t0 = time.process_time()
            r = await c.post("/v1/reconstruct", data={"task": "tops"}, files=files)
            cpu = time.process_time() - t0
        assert r.status_code == 422 and "decode budget" in r.json()["error"]
        assert cpu < 1.0  # refused from the headers: no 4096² image was decoded

    asyncio.run(scenario())


def test_busy_edge_and_a_fast_client_are_refused_with_retry_after(run_dir: Path):
    async def scenario():
        tb = await edge_toolbox(run_dir, 0, None, None)
        async with _client(create_edge_app(tb, "edge-0", max_active=0)) as c:
            r = await c.post("/v1/generate", json={"task": "tops", "n": 1})
            assert r.status_code == 503 and "busy" in r.json()["error"] and r.headers["retry-after"] == "1"
        async with _client(create_edge_app(tb, "edge-0", rate_per_s=0.5, burst=2)) as c:
            codes = [(await c.post("/v1/generate", json={"task": "tops", "n": 1})).status_code for _ in range(3)]
            assert codes == [200, 200, 429]

    asyncio.run(scenario())


# -- strangers: random names, anonymous callers ---------------------------------------------------


def test_random_task_names_cost_one_cloud_lookup_and_leave_no_locks(run_dir: Path, cloud):
    _, url, token = cloud

    class Counting(httpx.AsyncBaseTransport):
        def __init__(self):
            self.inner, self.lookups = httpx.AsyncHTTPTransport(), 0

        async def handle_async_request(self, request):
            self.lookups += request.url.path.startswith("/v1/models")
            return await self.inner.handle_async_request(request)

    async def scenario():
        transport = Counting()
        tb = await edge_toolbox(run_dir, 0, url, token, transport=transport)
        async with _client(create_edge_app(tb, "edge-0", rate_per_s=1e6, burst=1e6, max_active=1000)) as c:
            replies = await asyncio.gather(
                *[c.post("/v1/generate", json={"task": f"t{secrets.token_hex(6)}", "n": 1}) for _ in range(200)]
            )
            assert {r.status_code for r in replies} == {404}
            assert transport.lookups == 1  # one look at the cloud's catalogue, not 200 lookups
            assert tb.locks == {} and tb.flights == {}
            assert (await c.post("/v1/generate", json={"task": "bags", "n": 1})).status_code == 200

    asyncio.run(scenario())


def test_with_user_tokens_anonymous_callers_get_401_and_no_catalogue_or_errors(run_dir: Path, cloud):
    _, url, token = cloud
    users = frozenset({token_hash("user-1")})
    auth = {"Authorization": "Bearer user-1"}

    async def scenario():
        tb = await edge_toolbox(run_dir, 0, url, token)
        tb._error("bags", "secret detail of a refused model")
        app = create_edge_app(tb, "edge-0", user_tokens=lambda: users)
        async with _client(app, host="10.1.2.3") as c:
            assert (await c.get("/")).status_code == 200 and (await c.get("/healthz")).status_code == 200
            for method, path, kw in (
                ("GET", "/v1/tasks", {}),
                ("GET", "/v1/toolbox", {}),
                ("GET", "/metrics", {}),
                ("POST", "/v1/generate", {"json": {"task": "shoes", "n": 1}}),
                ("POST", "/v1/reconstruct", {"data": {"task": "shoes"}, "files": {"files": ("a.png", b"x")}}),
            ):
                r = await c.request(method, path, **kw)
                assert r.status_code == 401, path
                assert not any(t in r.text for t in ("tops", "bags", "trousers", "secret")), path
            r = await c.request(
                "POST", "/v1/generate", json={"task": "tops", "n": 1}, headers={"Authorization": "Bearer x"}
            )
            assert r.status_code == 401
            assert (await c.get("/v1/tasks", headers=auth)).json()["tasks"] == ["bags", "tops", "trousers"]
            r = await c.post("/v1/generate", json={"task": "shoes", "n": 1}, headers=auth)
            assert r.status_code == 404 and "bags" in r.json()["error"]
            assert "last_error" not in (await c.get("/v1/toolbox", headers=auth)).json()  # not the operator
        async with _client(app) as c:  # the operator, on the edge machine
            assert "secret" in (await c.get("/v1/toolbox", headers=auth)).json()["last_error"]["bags"]

    asyncio.run(scenario())


# -- tokens: revoke, rotate, expire ---------------------------------------------------------------


def test_a_revoked_token_is_a_503_naming_the_credential_and_a_rotated_file_needs_no_restart(
    run_dir: Path, cloud, tmp_path: Path
):
    registry, url, token = cloud
    token_file = tmp_path / "edge.token"
    token_file.write_text(token + "\n")

    async def scenario():
        tb = await edge_toolbox(run_dir, 0, url, token_file)
        async with _client(create_edge_app(tb, "edge-0")) as c:
            assert (await c.post("/v1/generate", json={"task": "bags", "n": 1})).status_code == 200
            assert registry.revoke_token("edge-0")
            r = await c.post("/v1/generate", json={"task": "trousers", "n": 1})
            assert r.status_code == 503 and "refused this edge's credential" in r.json()["error"]
            assert (await c.post("/v1/generate", json={"task": "bags", "n": 1})).status_code == 200  # still held
            token_file.write_text(registry.issue_token("edge-0") + "\n")  # rotated, no restart
            r = await c.post("/v1/generate", json={"task": "trousers", "n": 1})
            assert r.status_code == 200 and r.headers["x-baim-toolbox"] == "miss"

    asyncio.run(scenario())


def test_token_list_revoke_expiry_and_every_cloud_endpoint_but_healthz_needs_one(run_dir: Path, cloud, capsys):
    registry, url, token = cloud
    short = registry.issue_token("short", expires_s=0.3)
    assert registry.client_of(short) == "short"
    assert main(["serve", "token", "--run", str(run_dir), "--name", "laptop", "--expires-days", "1"]) == 0
    laptop = capsys.readouterr().out.strip()
    assert main(["serve", "token", "--run", str(run_dir), "--list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in listed] == ["edge-0", "laptop", "short"] and laptop not in json.dumps(listed)
    assert listed[0]["expires"] is None and listed[1]["expires"] > time.time() + 86000
    assert main(["serve", "token", "--run", str(run_dir), "--revoke", "laptop"]) == 0
    assert registry.client_of(laptop) is None
    assert main(["serve", "token", "--run", str(run_dir), "--revoke", "laptop"]) == 2
    time.sleep(0.4)
    assert registry.client_of(short) is None  # expired
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/healthz").status_code == 200
        for path in ("/", "/docs", "/openapi.json"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"Authorization": f"Bearer {short}"}).status_code == 401, path
            assert c.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 200, path


# -- trust: rollback, refresh from a web page, the re-check on load, the shield --------------------


def test_an_older_signed_version_is_refused_as_a_rollback(run_dir: Path, cloud):
    registry, url, token = cloud
    save_model(compact_models(seed=4)[2], run_dir / "cloud" / "compact" / "bags")
    assert registry.publish(run_dir / "cloud" / "compact" / "bags").version == 2

    async def scenario():
        tb = await edge_toolbox(run_dir, 0, url, token)
        async with _client(create_edge_app(tb, "edge-0")) as c:
            assert (await c.post("/v1/generate", json={"task": "bags", "n": 1})).headers["x-baim-model"] == "bags@2"
            with sqlite3.connect(registry.root / "registry.db") as db:  # the registry now offers v1 as latest
                db.execute("DELETE FROM models WHERE task = 'bags' AND version = 2")
            assert (await c.delete("/v1/toolbox/bags")).json()["dropped"] == ["bags@2"]
            r = await c.post("/v1/generate", json={"task": "bags", "n": 1})
            assert r.status_code == 502 and "rollback" in r.json()["error"]
            assert not (tb.store.root / "bags").exists() or not any((tb.store.root / "bags").iterdir())

    asyncio.run(scenario())


def test_refresh_needs_a_request_a_web_page_cannot_send_unasked(run_dir: Path, cloud):
    _, url, token = cloud

    async def scenario():
        tb = await edge_toolbox(run_dir, 0, url, token)
        async with _client(create_edge_app(tb, "edge-0")) as c:
            await c.post("/v1/generate", json={"task": "bags", "n": 1})
            simple = [  # what a page can send cross-origin without a preflight
                await c.post("/v1/toolbox/refresh", params={"task": "bags"}),
                await c.post("/v1/toolbox/refresh", params={"task": "bags"}, data={"task": "bags"}),
                await c.post("/v1/toolbox/refresh?task=bags", content=b"{}", headers={"content-type": "text/plain"}),
            ]
            assert [r.status_code for r in simple] == [403] * 3 and "X-Baim-Admin" in simple[0].json()["error"]
            r = await c.post("/v1/toolbox/refresh", params={"task": "bags"}, headers=ADMIN)
            assert r.status_code == 200 and r.json()["reason"] == "up to date"
            r = await c.post("/v1/toolbox/refresh", json={"task": "bags"})
            assert r.status_code == 200 and r.json()["serving"] == "bags@1"

    asyncio.run(scenario())


def test_a_stored_model_swapped_for_another_valid_model_is_refused_on_load(run_dir: Path, cloud, tmp_path: Path):
    """A model on disk replaced by another well-formed model of the same task (manifest and
    weights consistent, so only the signature can tell) is not served: it is fetched again."""
    registry, url, token = cloud
    impostor = tmp_path / "impostor"
    other = compact_models(seed=7)[2]
    save_model(other, impostor)

    async def scenario():
        tb = await edge_toolbox(run_dir, 0, url, token)
        async with _client(create_edge_app(tb, "edge-0")) as c:
            assert (await c.post("/v1/generate", json={"task": "bags", "n": 1})).headers["x-baim-toolbox"] == "miss"
            stored = tb.store.root / "bags" / "1"
            for name in ("manifest.json", "weights.safetensors"):
                shutil.copyfile(impostor / name, stored / name)
            tb.memory.clear()
            r = await c.post("/v1/generate", json={"task": "bags", "n": 1})
            assert r.status_code == 200 and r.headers["x-baim-toolbox"] == "miss" and tb.stats.fetches == 2
            served = (stored / "weights.safetensors").read_bytes()
            assert served == registry.weights_path(registry.latest("bags")).read_bytes()

    asyncio.run(scenario())


def test_a_client_that_goes_away_does_not_cancel_the_fetch_others_wait_for(run_dir: Path, cloud):
    _, url, token = cloud

    class Held(httpx.AsyncBaseTransport):
        def __init__(self):
            self.inner, self.release, self.asked = httpx.AsyncHTTPTransport(), asyncio.Event(), asyncio.Event()

        async def handle_async_request(self, request):
            if request.url.path.endswith("/weights"):
                self.asked.set()
                await asyncio.wait_for(self.release.wait(), timeout=60)
            return await self.inner.handle_async_request(request)

    async def scenario():
        transport = Held()
        tb = await edge_toolbox(run_dir, 0, url, token, transport=transport)
        leaving = asyncio.create_task(tb.get("bags"))
        staying = asyncio.create_task(tb.get("bags"))
        await asyncio.wait_for(transport.asked.wait(), timeout=60)
        leaving.cancel()
        await asyncio.sleep(0.05)
        transport.release.set()
        loaded, status = await asyncio.wait_for(staying, timeout=60)
        assert status == "miss" and loaded.label == "bags@1" and tb.stats.fetches == 1
        with pytest.raises(asyncio.CancelledError):
            await leaving
        await tb.aclose()

    asyncio.run(scenario())


def test_the_disk_budget_removes_the_least_recently_used_fetched_model(run_dir: Path, cloud):
    _, url, token = cloud

    async def scenario():
        tb = await edge_toolbox(run_dir, 0, url, token)
        tb.budget = 1000  # nothing stays in memory: only the disk budget decides
        async with _client(create_edge_app(tb, "edge-0")) as c:
            await c.post("/v1/generate", json={"task": "bags", "n": 1})
            one = next(h.bytes for h in tb.store.held() if h.task == "bags")
            tb.disk_budget = int(1.5 * one)
            await c.post("/v1/generate", json={"task": "trousers", "n": 1})
            assert sorted(h.label for h in tb.store.held()) == ["tops@own", "trousers@1"]
            assert tb.stats.disk_evictions == 1
            assert (await c.get("/v1/toolbox")).json()["disk_budget_bytes"] == int(1.5 * one)

    asyncio.run(scenario())
