"""The registry's HTTP client, used by edge toolboxes on a miss and by ``baim pull``.

Network failures become :class:`RegistryUnavailable` (the edge turns it into a 503 that says
the cloud is down), a refused token :class:`RegistryRefused`, an unknown task
:class:`UnknownTask` carrying the tasks the registry does know.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from ..errors import BaimError

MAX_WEIGHTS_BYTES = 2 << 30  # a compact model larger than 2 GiB is not one baim made


class RegistryUnavailable(BaimError):
    """The registry could not be reached or answered with a server error."""


class RegistryRefused(BaimError):
    """The registry refused the request (token missing or not valid, bad request)."""


class UnknownTask(BaimError):
    def __init__(self, task: str, known: list[str]):
        super().__init__(f"unknown task {task!r}; known tasks: {', '.join(known) or '(none)'}")
        self.task, self.known = task, known


class RegistryClient:
    """Async client of one registry. ``transport`` lets tests use an in-process ASGI app."""

    def __init__(
        self,
        url: str,
        token: str,
        ca_file: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=ca_file) if ca_file else True,
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _get(self, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = await self._client.get(path, **kw)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(
                f"cloud registry at {self.url} is unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        if resp.status_code == 401:
            raise RegistryRefused(
                f"cloud registry at {self.url} refused the token (401); issue one with "
                "`baim serve token --run RUN --name NAME`"
            )
        if resp.status_code >= 500:
            raise RegistryUnavailable(f"cloud registry at {self.url} answered {resp.status_code}: {resp.text[:200]}")
        return resp

    async def public_key(self) -> bytes:
        resp = await self._get("/v1/public-key")
        resp.raise_for_status()
        return bytes.fromhex(resp.json()["public_key"])

    async def models(self) -> list[dict[str, Any]]:
        resp = await self._get("/v1/models")
        resp.raise_for_status()
        return list(resp.json()["models"])

    async def model(self, task: str) -> dict[str, Any]:
        """The latest version's entry: task, version, manifest, signature, sha256, bytes."""
        resp = await self._get(f"/v1/models/{task}")
        if resp.status_code == 404:
            body = resp.json()
            raise UnknownTask(task, list(body.get("known_tasks", [])))
        if resp.status_code != 200:
            raise RegistryRefused(f"cloud registry answered {resp.status_code} for {task!r}: {resp.text[:200]}")
        return dict(resp.json())

    async def weights(self, task: str, version: int, sha256: str) -> bytes:
        """The weights of one version. The ETag must name ``sha256`` (the manifest's); the
        toolbox then checks the bytes themselves against the signed manifest."""
        resp = await self._get(f"/v1/models/{task}/weights", params={"version": version})
        if resp.status_code != 200:
            raise RegistryRefused(f"cloud registry answered {resp.status_code} for {task}@{version} weights")
        data = resp.content
        if len(data) > MAX_WEIGHTS_BYTES:
            raise RegistryRefused(
                f"{task}@{version}: {len(data)} bytes of weights exceed the {MAX_WEIGHTS_BYTES} limit"
            )
        etag = resp.headers.get("etag", "").strip('"')
        if etag and etag != sha256:
            raise RegistryRefused(f"{task}@{version}: the registry's ETag {etag[:12]}… is not the manifest's sha256")
        return data
