"""The registry's HTTP client, used by edge toolboxes on a miss and by ``baim pull``.

Network failures become :class:`RegistryUnavailable` (the edge turns it into a 503 that says
the cloud is down), a refused token :class:`CredentialRefused` (a 503 that says the edge's
credential was refused: the operator's problem, not the model's), an unknown task
:class:`UnknownTask` carrying the tasks the registry does know. A token given as a file is read
again whenever the file changes, so a rotated token needs no restart.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from ..errors import BaimError
from ..signing import SigningError, public_from_hex

MAX_WEIGHTS_BYTES = 2 << 30  # a compact model larger than 2 GiB is not one baim made


class RegistryUnavailable(BaimError):
    """The registry could not be reached or answered with a server error."""


class RegistryRefused(BaimError):
    """The registry refused the request (bad request, or an answer that is not usable)."""


class CredentialRefused(RegistryRefused):
    """The registry refused this client's token (401): missing, revoked, expired or wrong."""


class UnknownTask(BaimError):
    def __init__(self, task: str, known: list[str]):
        super().__init__(f"unknown task {task!r}; known tasks: {', '.join(known) or '(none)'}")
        self.task, self.known = task, known


class RegistryClient:
    """Async client of one registry. ``transport`` lets tests use an in-process ASGI app."""

    def __init__(
        self,
        url: str,
        token: str | Path,
        ca_file: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        """``token``: the token, or a file holding it (read again whenever it changes)."""
        self.url = url.rstrip("/")
        self._token_file = token if isinstance(token, Path) else None
        self._token_stamp: tuple[int, int] | None = None
        self._token = "" if isinstance(token, Path) else token
        self._client = httpx.AsyncClient(
            base_url=self.url,
            verify=ssl.create_default_context(cafile=ca_file) if ca_file else True,
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def _auth(self) -> dict[str, str]:
        """The Authorization header, from the token file as it is now (one stat per request)."""
        if self._token_file is not None:
            try:
                st = self._token_file.stat()
                stamp = (st.st_mtime_ns, st.st_size)
                if stamp != self._token_stamp:
                    self._token, self._token_stamp = self._token_file.read_text().strip(), stamp
            except OSError as exc:
                raise CredentialRefused(f"{self._token_file}: cannot read this edge's token file ({exc})") from exc
        return {"Authorization": f"Bearer {self._token}"}

    def _refused(self) -> CredentialRefused:
        where = f" (from {self._token_file}, read again when it changes)" if self._token_file else ""
        return CredentialRefused(
            f"cloud registry at {self.url} refused this client's token{where}: it is missing, revoked, expired "
            "or wrong (401); issue a new one with `baim serve token --run RUN --name NAME`"
        )

    async def _get(self, path: str, **kw: Any) -> httpx.Response:
        headers = self._auth()
        try:
            resp = await self._client.get(path, headers=headers, **kw)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(
                f"cloud registry at {self.url} is unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        if resp.status_code == 401:
            raise self._refused()
        if resp.status_code >= 500:
            raise RegistryUnavailable(f"cloud registry at {self.url} answered {resp.status_code}: {resp.text[:200]}")
        return resp

    def _json(self, resp: httpx.Response, what: str) -> Any:
        if resp.status_code != 200:
            raise RegistryRefused(f"cloud registry answered {resp.status_code} for {what}: {resp.text[:200]}")
        try:
            return resp.json()
        except ValueError as exc:
            raise RegistryRefused(f"cloud registry sent something that is not JSON for {what}") from exc

    async def public_key(self) -> bytes:
        body = self._json(await self._get("/v1/public-key"), "its public key")
        try:
            return public_from_hex(str(body["public_key"]))
        except (KeyError, TypeError, SigningError) as exc:
            raise RegistryRefused(f"cloud registry sent an unusable public key: {exc}") from exc

    async def models(self) -> list[dict[str, Any]]:
        return list(self._json(await self._get("/v1/models"), "the model list")["models"])

    async def model(self, task: str) -> dict[str, Any]:
        """The latest version's entry: task, version, manifest, signature, sha256, bytes."""
        resp = await self._get(f"/v1/models/{quote(task, safe='')}")
        if resp.status_code == 404:
            try:
                known = list(resp.json().get("known_tasks", []))
            except ValueError:
                known = []
            raise UnknownTask(task, known)
        return dict(self._json(resp, repr(task)))

    async def weights(self, task: str, version: int, sha256: str, size: int = 0) -> bytes:
        """The weights of one version, streamed and cut off past ``size`` (the manifest's
        ``weights_bytes``) or :data:`MAX_WEIGHTS_BYTES`. The ETag must name ``sha256``; the
        toolbox then checks the bytes themselves against the signed manifest."""
        limit = size if 0 < size <= MAX_WEIGHTS_BYTES else MAX_WEIGHTS_BYTES
        path = f"/v1/models/{quote(task, safe='')}/weights"
        try:
            async with self._client.stream("GET", path, params={"version": version}, headers=self._auth()) as resp:
                if resp.status_code == 401:
                    raise self._refused()
                if resp.status_code != 200:
                    raise RegistryRefused(f"cloud registry answered {resp.status_code} for {task}@{version} weights")
                etag = resp.headers.get("etag", "").strip('"')
                if etag and etag != sha256:
                    raise RegistryRefused(
                        f"{task}@{version}: the registry's ETag {etag[:12]}… is not the manifest's sha256"
                    )
                if int(resp.headers.get("content-length", 0)) > limit:
                    raise RegistryRefused(f"{task}@{version}: {resp.headers['content-length']} bytes exceed {limit}")
                data = bytearray()
                async for chunk in resp.aiter_bytes():
                    data += chunk
                    if len(data) > limit:
                        raise RegistryRefused(f"{task}@{version}: the weights exceed the {limit} bytes announced")
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"cloud registry at {self.url}: {type(exc).__name__}: {exc}") from exc
        return bytes(data)
