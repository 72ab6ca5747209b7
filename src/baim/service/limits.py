"""What an edge spends on one caller, bounded: body bytes as they arrive, upload bytes per file,
requests per second per client, and requests in progress.

A ``Content-Length`` header is a claim, not a count: a chunked body has none, and a client may
send more than it declared. So the body limit counts the bytes the server actually receives and
stops reading (413) the moment a request passes its limit; nothing past the limit is buffered or
spooled. Uploads are parsed by a multipart parser that stops a file at the per-file limit, so a
200 MiB file is refused after 8 MiB, not after it was written to a temporary file.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .http import error


class BodyLimit:
    """ASGI middleware: refuse a body over ``limit_for(path)`` bytes with 413, counting the
    bytes received (chunked or not); a declared ``Content-Length`` over the limit is refused
    before a byte of the body is read."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]):
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(send, limit, f"{declared.decode('latin-1')[:20]} bytes declared")
            return
        received, over, started = 0, False, False

        async def counted() -> Message:
            """The body as received; past the limit the request reads as if the client had
            gone (what every body reader already handles), and nothing more is read."""
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to a truncated body is replaced by the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            await self._refuse(send, limit, f"more than {limit} bytes sent")

    @staticmethod
    async def _refuse(send: Send, limit: int, what: str) -> None:
        response = error(413, f"request body too large ({what}); the limit here is {limit} bytes")
        response.headers["Connection"] = "close"
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # a refused request's body is never read
    return {"type": "http.disconnect"}


def install_body_limit(app: Any, limit_for: Callable[[str], int]) -> None:
    """Outermost: the body is counted before any other middleware or handler reads it."""
    app.add_middleware(BodyLimit, limit_for=limit_for)


class UploadTooLarge(Exception):
    pass


class _Uploads(MultiPartParser):
    """Starlette's parser with a limit per file: the part that passes it ends the parse, so its
    bytes beyond the limit are never written to the spool."""

    def __init__(self, request: Request, max_files: int, max_file_bytes: int):
        super().__init__(request.headers, request.stream(), max_files=max_files, max_fields=8, max_part_size=1024)
        self.max_file_bytes = max_file_bytes
        self._part_bytes = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._part_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._part_bytes += end - start
        if self._current_part.file is not None and self._part_bytes > self.max_file_bytes:
            name = self._current_part.file.filename or "a file"
            raise UploadTooLarge(f"{name}: more than {self.max_file_bytes} bytes; the limit is per file")
        super().on_part_data(data, start, end)


async def read_uploads(
    request: Request, max_files: int, max_file_bytes: int
) -> tuple[dict[str, str], list[UploadFile]]:
    """The form fields and files of a multipart upload, each file at most ``max_file_bytes``.
    Raises UploadTooLarge, or ValueError for a body that is not a usable multipart form."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ValueError("send the images as multipart/form-data (fields: task, format, files)")
    parser = _Uploads(request, max_files, max_file_bytes)
    try:
        form = await parser.parse()
    except UploadTooLarge:
        for f in parser._files_to_close_on_error:
            f.close()
        raise
    except MultiPartException as exc:
        raise ValueError(exc.message) from exc
    fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    files = [v for k, v in form.multi_items() if k == "files" and isinstance(v, UploadFile)]
    return fields, files


class RateLimit:
    """A token bucket per client: ``rate`` requests per second, bursts of ``burst``. The table
    is bounded (least recently seen clients are forgotten first), so many addresses cannot
    grow it."""

    def __init__(self, rate: float, burst: float, max_clients: int = 4096):
        self.rate, self.burst, self.max_clients = float(rate), float(burst), max_clients
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def wait_s(self, client: str) -> float:
        """0 when ``client`` may go on (a token is spent), else seconds until it may."""
        now = time.monotonic()
        tokens, last = self.buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self.buckets[client] = (tokens - 1 if wait == 0 else tokens, now)
        while len(self.buckets) > self.max_clients:
            self.buckets.popitem(last=False)
        return wait


class InProgress:
    """At most ``limit`` expensive requests in progress at once; the rest are answered 503 at
    once (they would only queue for the same CPU)."""

    def __init__(self, limit: int):
        self.limit, self.active = limit, 0

    @asynccontextmanager
    async def gate(self) -> AsyncIterator[Response | None]:
        """Yields None inside the limit (the request counts until the block ends), else the 503."""
        if self.active >= self.limit:
            resp = error(503, f"this edge is busy ({self.limit} requests in progress); retry shortly")
            resp.headers["Retry-After"] = "1"
            yield resp
            return
        self.active += 1
        try:
            yield None
        finally:
            self.active -= 1
